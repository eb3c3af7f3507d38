//! Reading the tenant tables: which tables have the tenant column, their RLS switches,
//! the role's privileges on them, and their policies, indexes, foreign keys and sequences.

use tokio_postgres::Client;

use super::{query, ForeignKey, Index, Policy, Scope, TableGrants, TenantTable, USER_SCHEMAS};
use crate::audit::AuditError;

/// Schemas of application tables: the user schemas without the signed context's own
/// (`pgtenant.signing_keys` is neither a tenant table nor one to list).
const TABLE_SCHEMAS: &str = "n.nspname <> 'pgtenant'";

pub(super) async fn tenant_tables(client: &Client, scope: &Scope) -> Result<Vec<TenantTable>, AuditError> {
    let sql = format!(
        "SELECT c.oid, pg_catalog.format('%I.%I', n.nspname, c.relname), c.relname::text, \
         pg_catalog.quote_ident(n.nspname), c.relkind = 'p', \
         (SELECT pg_catalog.format('%I.%I', pn.nspname, pc.relname) FROM pg_catalog.pg_inherits i \
          JOIN pg_catalog.pg_class pc ON pc.oid = i.inhparent JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace \
          WHERE i.inhrelid = c.oid ORDER BY i.inhseqno LIMIT 1), \
         c.relispartition, pg_catalog.format_type(a.atttypid, a.atttypmod), c.relrowsecurity, c.relforcerowsecurity, \
         pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(c.relowner)), \
         pg_catalog.pg_has_role($1::name, c.relowner, 'MEMBER'), \
         pg_catalog.has_table_privilege($1::name, c.oid, 'SELECT'), pg_catalog.has_table_privilege($1::name, c.oid, 'INSERT'), \
         pg_catalog.has_table_privilege($1::name, c.oid, 'UPDATE'), pg_catalog.has_table_privilege($1::name, c.oid, 'DELETE'), \
         pg_catalog.has_table_privilege($1::name, c.oid, 'TRUNCATE'), \
         pg_catalog.has_table_privilege($1::name, c.oid, 'REFERENCES'), \
         pg_catalog.has_table_privilege($1::name, c.oid, 'TRIGGER') \
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
         WHERE c.relkind IN ('r', 'p') AND a.attname = $2::name AND {USER_SCHEMAS} AND {TABLE_SCHEMAS} \
         ORDER BY 2"
    );
    let rows = query(client, &sql, &[&scope.role, &scope.column]).await?;
    Ok(rows
        .iter()
        .map(|r| TenantTable {
            oid: r.get(0),
            name: r.get(1),
            relname: r.get(2),
            schema: r.get(3),
            partitioned: r.get(4),
            parent: r.get(5),
            is_partition: r.get(6),
            column_type: r.get(7),
            rls_enabled: r.get(8),
            rls_forced: r.get(9),
            owner: r.get(10),
            role_owns: r.get(11),
            grants: TableGrants {
                select: r.get(12),
                insert: r.get(13),
                update: r.get(14),
                delete: r.get(15),
                truncate: r.get(16),
                references: r.get(17),
                trigger: r.get(18),
            },
            ..TenantTable::default()
        })
        .collect())
}

/// The table with `oid` in `tables`.
fn by_oid(tables: &mut [TenantTable], oid: u32) -> Option<&mut TenantTable> {
    tables.iter_mut().find(|t| t.oid == oid)
}

pub(super) async fn attach_policies(
    client: &Client,
    role: &str,
    oids: &[u32],
    tables: &mut [TenantTable],
) -> Result<(), AuditError> {
    let sql = "SELECT p.polrelid, pg_catalog.quote_ident(p.polname), p.polcmd::text, p.polpermissive, \
               EXISTS (SELECT 1 FROM pg_catalog.unnest(p.polroles) r \
                       WHERE CASE WHEN r = 0 THEN true ELSE pg_catalog.pg_has_role($1::name, r, 'USAGE') END), \
               EXISTS (SELECT 1 FROM pg_catalog.unnest(p.polroles) r \
                       WHERE CASE WHEN r = 0 THEN true ELSE pg_catalog.pg_has_role($1::name, r, 'MEMBER') END), \
               pg_catalog.pg_get_expr(p.polqual, p.polrelid), pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid), \
               EXISTS (SELECT 1 FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_proc f ON f.oid = d.refobjid \
                       JOIN pg_catalog.pg_namespace fn ON fn.oid = f.pronamespace \
                       WHERE d.classid = 'pg_catalog.pg_policy'::pg_catalog.regclass AND d.objid = p.oid \
                       AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass \
                       AND fn.nspname = 'pgtenant' AND f.proname = 'current_tenant' AND f.pronargs = 0) \
               FROM pg_catalog.pg_policy p WHERE p.polrelid = ANY($2::oid[]) ORDER BY 1, 2";
    for r in query(client, sql, &[&role, &oids]).await? {
        let command: String = r.get(2);
        let policy = Policy {
            name: r.get(1),
            command: command.chars().next().unwrap_or('*'),
            permissive: r.get(3),
            applies: r.get(4),
            reachable: r.get(5),
            using: r.get(6),
            check: r.get(7),
            calls_signed: r.get(8),
        };
        if let Some(t) = by_oid(tables, r.get(0)) {
            t.policies.push(policy);
        }
    }
    Ok(())
}

pub(super) async fn attach_indexes(
    client: &Client,
    column: &str,
    oids: &[u32],
    tables: &mut [TenantTable],
) -> Result<(), AuditError> {
    let sql = "SELECT i.indrelid, pg_catalog.quote_ident(ic.relname), i.indisunique, i.indpred IS NOT NULL, \
               i.indkey[0] = a.attnum, \
               a.attnum = ANY (SELECT u.k FROM pg_catalog.unnest(i.indkey) WITH ORDINALITY AS u(k, ord) \
                               WHERE u.ord <= i.indnkeyatts), \
               COALESCE((SELECT bool_and(COALESCE(ka.attidentity <> '' OR pg_catalog.pg_get_expr(d.adbin, d.adrelid) \
                         ~ '^(nextval\\(|gen_random_uuid\\(|uuid_generate_v[14]\\()', false)) \
                 FROM pg_catalog.unnest(i.indkey) WITH ORDINALITY AS u(k, ord) \
                 LEFT JOIN pg_catalog.pg_attribute ka ON ka.attrelid = i.indrelid AND ka.attnum = u.k \
                 LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = i.indrelid AND d.adnum = u.k \
                 WHERE u.ord <= i.indnkeyatts), false) \
               FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid \
               JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attname = $1::name \
               WHERE i.indrelid = ANY($2::oid[]) ORDER BY 1, 2";
    for r in query(client, sql, &[&column, &oids]).await? {
        let index = Index {
            name: r.get(1),
            unique: r.get(2),
            partial: r.get(3),
            leads_with_tenant: r.get(4),
            has_tenant: r.get(5),
            generated_keys: r.get(6),
        };
        if let Some(t) = by_oid(tables, r.get(0)) {
            t.indexes.push(index);
        }
    }
    Ok(())
}

pub(super) async fn attach_foreign_keys(
    client: &Client,
    column: &str,
    oids: &[u32],
    tables: &mut [TenantTable],
) -> Result<(), AuditError> {
    let sql = "SELECT co.conrelid, pg_catalog.quote_ident(co.conname), \
               pg_catalog.format('%I.%I', fn.nspname, fc.relname), co.confrelid = ANY($2::oid[]), \
               EXISTS (SELECT 1 FROM unnest(co.conkey, co.confkey) AS k(l, r) \
                       JOIN pg_catalog.pg_attribute la ON la.attrelid = co.conrelid AND la.attnum = k.l \
                       JOIN pg_catalog.pg_attribute ra ON ra.attrelid = co.confrelid AND ra.attnum = k.r \
                       WHERE la.attname = $1::name AND ra.attname = $1::name), \
               pg_catalog.pg_get_constraintdef(co.oid) \
               FROM pg_catalog.pg_constraint co JOIN pg_catalog.pg_class fc ON fc.oid = co.confrelid \
               JOIN pg_catalog.pg_namespace fn ON fn.oid = fc.relnamespace \
               WHERE co.contype = 'f' AND co.conparentid = 0 AND co.conrelid = ANY($2::oid[]) ORDER BY 1, 2";
    for r in query(client, sql, &[&column, &oids]).await? {
        let fk = ForeignKey {
            name: r.get(1),
            references: r.get(2),
            references_tenant_table: r.get(3),
            includes_tenant: r.get(4),
            definition: r.get(5),
        };
        if let Some(t) = by_oid(tables, r.get(0)) {
            t.foreign_keys.push(fk);
        }
    }
    Ok(())
}

pub(super) async fn attach_sequences(
    client: &Client,
    oids: &[u32],
    tables: &mut [TenantTable],
) -> Result<(), AuditError> {
    let sql = "SELECT DISTINCT d.refobjid, pg_catalog.format('%I.%I', n.nspname, s.relname) \
               FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S' \
               JOIN pg_catalog.pg_namespace n ON n.oid = s.relnamespace \
               WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass \
               AND d.deptype IN ('a', 'i') AND d.refobjid = ANY($1::oid[]) ORDER BY 1, 2";
    for r in query(client, sql, &[&oids]).await? {
        if let Some(t) = by_oid(tables, r.get(0)) {
            t.sequences.push(r.get(1));
        }
    }
    Ok(())
}

pub(super) async fn other_tables(client: &Client, scope: &Scope) -> Result<Vec<(String, bool)>, AuditError> {
    let sql = format!(
        "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), \
         pg_catalog.has_table_privilege($1::name, c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE') \
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND {USER_SCHEMAS} AND {TABLE_SCHEMAS} \
         AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid \
                         AND a.attname = $2::name AND NOT a.attisdropped) \
         AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::regclass \
                         AND d.objid = c.oid AND d.deptype = 'e') \
         ORDER BY 1"
    );
    let rows = query(client, &sql, &[&scope.role, &scope.column]).await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
