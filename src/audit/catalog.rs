//! One read of the system catalogs: everything `doctor` checks and `policy` generates from,
//! as plain data, so the checks themselves are pure functions over a [`Catalog`].
//!
//! Every query is read-only and needs no privilege beyond reading the catalogs; privileges
//! are evaluated for the audited role with `has_*_privilege` and `pg_has_role`.

use tokio_postgres::{Client, Row};

use super::{AuditError, Target};

/// The schemas that hold no user objects.
const USER_SCHEMAS: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp_)'";

/// Who is audited and what marks a tenant table.
#[derive(Debug, Clone)]
pub struct Scope {
    /// The pooled role (`upstream.user`).
    pub role: String,
    /// The tenant column.
    pub column: String,
    /// The tenant setting (lower case).
    pub setting: String,
}

/// Everything read from one database.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// `current_database()`.
    pub database: String,
    /// The database name, quoted as an identifier.
    pub database_ident: String,
    /// `server_version`, e.g. `15.10 (Debian ...)`.
    pub server_version: String,
    /// `server_version_num`, e.g. 150010.
    pub server_version_num: i32,
    /// The user doctor connected as, quoted.
    pub current_user: String,
    /// The tenant column, quoted as an identifier.
    pub column_ident: String,
    /// The audited role; `None` when it does not exist.
    pub role: Option<RoleInfo>,
    /// Tables and partitions with the tenant column.
    pub tables: Vec<TenantTable>,
    /// Tables without the tenant column: (name, the role has some privilege on it).
    pub other_tables: Vec<(String, bool)>,
    /// Ways to run SQL the proxy never sees, and other privileges around it.
    pub privileges: Privileges,
    /// Views and materialized views that read tenant tables (directly or through views).
    pub views: Vec<ViewInfo>,
    /// Functions with a `SET <setting>` clause: (signature, executable by the role).
    pub setting_functions: Vec<(String, bool)>,
    /// SECURITY DEFINER functions the role can execute that do not pin `search_path`.
    pub unpinned_definers: Vec<String>,
    /// `pg_db_role_setting` entries for the setting that reach the role in this database.
    pub role_settings: Vec<RoleSetting>,
    /// The setting's value in every new session, from the server configuration, if any.
    pub server_setting_value: Option<String>,
}

/// The audited role.
#[derive(Debug, Clone, Default)]
pub struct RoleInfo {
    /// The name, quoted as an identifier.
    pub ident: String,
    /// `rolsuper`.
    pub superuser: bool,
    /// `rolbypassrls`.
    pub bypassrls: bool,
    /// `rolcreaterole`.
    pub createrole: bool,
    /// `rolcreatedb`.
    pub createdb: bool,
    /// Every role it is a member of, directly or not.
    pub member_of: Vec<String>,
}

/// A table or partition with the tenant column.
#[derive(Debug, Clone, Default)]
pub struct TenantTable {
    /// `pg_class.oid`.
    pub oid: u32,
    /// `schema.table`, quoted.
    pub name: String,
    /// The bare table name (unquoted), for naming indexes.
    pub relname: String,
    /// The schema, quoted.
    pub schema: String,
    /// A partitioned table (its partitions are listed separately).
    pub partitioned: bool,
    /// The parent (partitioned table or inheritance parent), quoted.
    pub parent: Option<String>,
    /// Whether the parent relationship is partitioning (else inheritance).
    pub is_partition: bool,
    /// The tenant column's type, e.g. `uuid`.
    pub column_type: String,
    /// `relrowsecurity`.
    pub rls_enabled: bool,
    /// `relforcerowsecurity`.
    pub rls_forced: bool,
    /// The owner, quoted.
    pub owner: String,
    /// The role owns the table or is a member of its owner.
    pub role_owns: bool,
    /// The role's privileges on it.
    pub grants: TableGrants,
    /// Its policies.
    pub policies: Vec<Policy>,
    /// Its indexes.
    pub indexes: Vec<Index>,
    /// Its foreign keys (not those cloned onto partitions).
    pub foreign_keys: Vec<ForeignKey>,
    /// Sequences owned by its columns, quoted.
    pub sequences: Vec<String>,
}

impl TenantTable {
    /// `table public.t`, or `partition public.t_2026 (of public.t)`, for reports.
    pub fn label(&self) -> String {
        match (&self.parent, self.is_partition) {
            (Some(parent), true) => format!("partition {} (of {parent})", self.name),
            (Some(parent), false) => format!("table {} (inherits {parent})", self.name),
            (None, _) => format!("table {}", self.name),
        }
    }
}

/// The audited role's privileges on one table (directly, through PUBLIC or through roles).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableGrants {
    /// SELECT.
    pub select: bool,
    /// INSERT.
    pub insert: bool,
    /// UPDATE.
    pub update: bool,
    /// DELETE.
    pub delete: bool,
    /// TRUNCATE.
    pub truncate: bool,
    /// REFERENCES.
    pub references: bool,
    /// TRIGGER.
    pub trigger: bool,
}

/// One row-level security policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The name, quoted.
    pub name: String,
    /// `polcmd`: `r` SELECT, `a` INSERT, `w` UPDATE, `d` DELETE, `*` ALL.
    pub command: char,
    /// PERMISSIVE (else RESTRICTIVE).
    pub permissive: bool,
    /// It applies to the role (PUBLIC, the role, or a role whose privileges it inherits).
    pub applies: bool,
    /// The role could make it apply (it is a member, perhaps without inheriting).
    pub reachable: bool,
    /// `USING` expression as `pg_get_expr` prints it.
    pub using: Option<String>,
    /// `WITH CHECK` expression as `pg_get_expr` prints it.
    pub check: Option<String>,
}

/// One index of a tenant table.
#[derive(Debug, Clone, Default)]
pub struct Index {
    /// The name, quoted.
    pub name: String,
    /// UNIQUE (including primary keys).
    pub unique: bool,
    /// Partial (has a WHERE clause).
    pub partial: bool,
    /// The tenant column is its first key column.
    pub leads_with_tenant: bool,
    /// The tenant column is one of its key columns.
    pub has_tenant: bool,
    /// Every key column is generated (identity, serial, random uuid default).
    pub generated_keys: bool,
}

/// One foreign key of a tenant table.
#[derive(Debug, Clone, Default)]
pub struct ForeignKey {
    /// The constraint name, quoted.
    pub name: String,
    /// The referenced table, quoted.
    pub references: String,
    /// The referenced table is a tenant table too.
    pub references_tenant_table: bool,
    /// The tenant column is matched to the referenced tenant column.
    pub includes_tenant: bool,
    /// `pg_get_constraintdef`.
    pub definition: String,
}

/// Privileges of the role that open ways around the proxy.
#[derive(Debug, Clone, Default)]
pub struct Privileges {
    /// TEMPORARY on the database.
    pub temp: bool,
    /// Schemas it can CREATE in, quoted.
    pub create_schemas: Vec<String>,
    /// Procedural languages (other than `sql`) it can use, quoted.
    pub languages: Vec<String>,
    /// It can EXECUTE `set_config`.
    pub set_config: bool,
    /// `set_config` is executable by PUBLIC.
    pub set_config_public: bool,
    /// Built-ins that run SQL given as text that it can execute (signatures).
    pub sql_text_functions: Vec<String>,
    /// dblink functions it can execute (signatures).
    pub dblink_functions: Vec<String>,
    /// Objects that show other sessions' query texts that it can use.
    pub activity_objects: Vec<String>,
    /// Objects that show statement texts prepared on the connection that it can use.
    pub prepared_objects: Vec<String>,
}

/// A view or materialized view over tenant tables.
#[derive(Debug, Clone, Default)]
pub struct ViewInfo {
    /// `schema.view`, quoted.
    pub name: String,
    /// A materialized view.
    pub materialized: bool,
    /// The owner, quoted.
    pub owner: String,
    /// The role is a member of the owner (the view then checks RLS as the role anyway).
    pub owned_by_role: bool,
    /// `security_invoker` is on.
    pub security_invoker: bool,
    /// The role can SELECT from it.
    pub selectable: bool,
    /// The tenant tables it reads, quoted.
    pub reads: Vec<String>,
}

/// A `pg_db_role_setting` entry that sets the tenant setting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleSetting {
    /// The role it is for (quoted), or `None` for every role.
    pub role: Option<String>,
    /// It is for this database only (else for every database).
    pub this_database: bool,
    /// The value it sets.
    pub value: String,
}

impl Catalog {
    /// Reads everything for `scope` from `client`.
    pub async fn load(client: &Client, scope: &Scope) -> Result<Catalog, AuditError> {
        let mut catalog = database(client, scope).await?;
        catalog.role = role(client, &scope.role).await?;
        if catalog.role.is_none() {
            return Err(AuditError::Usage(format!(
                "role {:?} does not exist in database {:?}: pass the pooled role with --role",
                scope.role, catalog.database
            )));
        }
        catalog.tables = tenant_tables(client, scope).await?;
        let oids: Vec<u32> = catalog.tables.iter().map(|t| t.oid).collect();
        attach_policies(client, &scope.role, &oids, &mut catalog.tables).await?;
        attach_indexes(client, &scope.column, &oids, &mut catalog.tables).await?;
        attach_foreign_keys(client, &scope.column, &oids, &mut catalog.tables).await?;
        attach_sequences(client, &oids, &mut catalog.tables).await?;
        catalog.other_tables = other_tables(client, scope).await?;
        let temp = catalog.privileges.temp;
        catalog.privileges = Privileges { temp, ..privileges(client, &scope.role).await? };
        catalog.views = views(client, &scope.role, &oids).await?;
        catalog.setting_functions = setting_functions(client, &scope.role, &scope.setting).await?;
        catalog.unpinned_definers = unpinned_definers(client, &scope.role).await?;
        catalog.role_settings = role_settings(client, &scope.role, &scope.setting).await?;
        catalog.server_setting_value = server_setting_value(client, &scope.setting).await?;
        Ok(catalog)
    }

    /// Connects to `target` and reads the catalog.
    pub async fn read(target: &Target, scope: &Scope) -> Result<Catalog, AuditError> {
        let client = target.connect(None).await?;
        Catalog::load(&client, scope).await
    }

    /// The tenant table with `name`, if any.
    pub fn table(&self, name: &str) -> Option<&TenantTable> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// The major version as PostgreSQL numbers it (`15`; `906` for 9.6).
    pub fn major(&self) -> i32 {
        major_of(self.server_version_num)
    }
}

/// The major version of a `server_version_num` (`150010` → 15, `90613` → 906).
pub fn major_of(num: i32) -> i32 {
    if num >= 100_000 {
        num / 10_000
    } else {
        num / 100
    }
}

async fn query(
    client: &Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<Row>, AuditError> {
    client.query(sql, params).await.map_err(|e| AuditError::Query(super::describe_error(&e)))
}

async fn database(client: &Client, scope: &Scope) -> Result<Catalog, AuditError> {
    let sql = "SELECT pg_catalog.current_database()::text, pg_catalog.quote_ident(pg_catalog.current_database()), \
               pg_catalog.current_setting('server_version'), pg_catalog.current_setting('server_version_num')::int4, \
               pg_catalog.quote_ident(current_user), pg_catalog.quote_ident($2::text), \
               CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1::name) \
               THEN pg_catalog.has_database_privilege($1::name, pg_catalog.current_database(), 'TEMPORARY') END";
    let rows = query(client, sql, &[&scope.role, &scope.column]).await?;
    let row = rows.first().ok_or_else(|| AuditError::Query("no row for the database".into()))?;
    Ok(Catalog {
        database: row.get(0),
        database_ident: row.get(1),
        server_version: row.get(2),
        server_version_num: row.get(3),
        current_user: row.get(4),
        column_ident: row.get(5),
        privileges: Privileges { temp: row.get::<_, Option<bool>>(6).unwrap_or(false), ..Privileges::default() },
        ..Catalog::default()
    })
}

async fn role(client: &Client, role: &str) -> Result<Option<RoleInfo>, AuditError> {
    let sql = "SELECT pg_catalog.quote_ident(r.rolname), r.rolsuper, r.rolbypassrls, r.rolcreaterole, r.rolcreatedb, \
               ARRAY(SELECT p.rolname::text FROM pg_catalog.pg_roles p \
                     WHERE p.oid <> r.oid AND pg_catalog.pg_has_role(r.oid, p.oid, 'MEMBER') ORDER BY 1) \
               FROM pg_catalog.pg_roles r WHERE r.rolname = $1::name";
    let rows = query(client, sql, &[&role]).await?;
    Ok(rows.first().map(|r| RoleInfo {
        ident: r.get(0),
        superuser: r.get(1),
        bypassrls: r.get(2),
        createrole: r.get(3),
        createdb: r.get(4),
        member_of: r.get(5),
    }))
}

async fn tenant_tables(client: &Client, scope: &Scope) -> Result<Vec<TenantTable>, AuditError> {
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
         WHERE c.relkind IN ('r', 'p') AND a.attname = $2::name AND {USER_SCHEMAS} ORDER BY 2"
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

async fn attach_policies(
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
               pg_catalog.pg_get_expr(p.polqual, p.polrelid), pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) \
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
        };
        if let Some(t) = by_oid(tables, r.get(0)) {
            t.policies.push(policy);
        }
    }
    Ok(())
}

async fn attach_indexes(
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

async fn attach_foreign_keys(
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

async fn attach_sequences(client: &Client, oids: &[u32], tables: &mut [TenantTable]) -> Result<(), AuditError> {
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

async fn other_tables(client: &Client, scope: &Scope) -> Result<Vec<(String, bool)>, AuditError> {
    let sql = format!(
        "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), \
         pg_catalog.has_table_privilege($1::name, c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE') \
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND {USER_SCHEMAS} \
         AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid \
                         AND a.attname = $2::name AND NOT a.attisdropped) \
         AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::regclass \
                         AND d.objid = c.oid AND d.deptype = 'e') \
         ORDER BY 1"
    );
    let rows = query(client, &sql, &[&scope.role, &scope.column]).await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// A function's signature, schema-qualified and quoted (`p` is its `pg_proc` row, `n` its schema).
const SIGNATURE: &str =
    "pg_catalog.format('%I.%I(%s)', n.nspname, p.proname, pg_catalog.oidvectortypes(p.proargtypes))";

/// `pg_catalog` functions whose names are in `names` that the role can execute.
fn executable_builtins() -> String {
    format!(
        "SELECT {SIGNATURE} FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.nspname = 'pg_catalog' AND p.proname = ANY($2::name[]) \
         AND pg_catalog.has_function_privilege($1::name, p.oid, 'EXECUTE') ORDER BY 1"
    )
}

async fn privileges(client: &Client, role: &str) -> Result<Privileges, AuditError> {
    let schemas = format!(
        "SELECT pg_catalog.quote_ident(n.nspname) FROM pg_catalog.pg_namespace n WHERE {USER_SCHEMAS} \
         AND pg_catalog.has_schema_privilege($1::name, n.oid, 'CREATE') ORDER BY 1"
    );
    let languages = "SELECT pg_catalog.quote_ident(l.lanname) FROM pg_catalog.pg_language l \
                     WHERE l.lanpltrusted AND l.lanname <> 'sql' \
                     AND pg_catalog.has_language_privilege($1::name, l.oid, 'USAGE') ORDER BY 1";
    let set_config =
        "SELECT pg_catalog.has_function_privilege($1::name, 'pg_catalog.set_config(text,text,boolean)', 'EXECUTE'), \
                      EXISTS (SELECT 1 FROM pg_catalog.pg_proc p, \
                              pg_catalog.aclexplode(COALESCE(p.proacl, pg_catalog.acldefault('f', p.proowner))) a \
                              WHERE p.oid = 'pg_catalog.set_config(text,text,boolean)'::pg_catalog.regprocedure \
                              AND a.grantee = 0 AND a.privilege_type = 'EXECUTE')";
    let dblink = format!(
        "SELECT {SIGNATURE} FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
         WHERE p.proname ~ '^dblink' AND pg_catalog.has_function_privilege($1::name, p.oid, 'EXECUTE') ORDER BY 1"
    );
    let views = "SELECT v FROM pg_catalog.unnest($2::text[]) v \
                 WHERE pg_catalog.has_table_privilege($1::name, v, 'SELECT') ORDER BY 1";
    let sc = query(client, set_config, &[&role]).await?;
    let sql_text = ["query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema", "ts_stat"];
    let activity_functions = ["pg_stat_get_activity", "pg_stat_get_backend_activity"];
    let names = |rows: Vec<Row>| rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>();
    let mut sql_text_functions = names(query(client, &executable_builtins(), &[&role, &sql_text.to_vec()]).await?);
    let rewrite = format!(
        "SELECT {SIGNATURE} FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
         WHERE p.oid = 'pg_catalog.ts_rewrite(tsquery,text)'::pg_catalog.regprocedure \
         AND pg_catalog.has_function_privilege($1::name, p.oid, 'EXECUTE')"
    );
    sql_text_functions.extend(names(query(client, &rewrite, &[&role]).await?));
    let mut activity_objects = names(query(client, views, &[&role, &vec!["pg_catalog.pg_stat_activity"]]).await?);
    activity_objects
        .extend(names(query(client, &executable_builtins(), &[&role, &activity_functions.to_vec()]).await?));
    let mut prepared_objects = names(query(client, views, &[&role, &vec!["pg_catalog.pg_prepared_statements"]]).await?);
    prepared_objects
        .extend(names(query(client, &executable_builtins(), &[&role, &vec!["pg_prepared_statement"]]).await?));
    Ok(Privileges {
        temp: false,
        create_schemas: names(query(client, &schemas, &[&role]).await?),
        languages: names(query(client, languages, &[&role]).await?),
        set_config: sc.first().is_some_and(|r| r.get(0)),
        set_config_public: sc.first().is_some_and(|r| r.get(1)),
        sql_text_functions,
        dblink_functions: names(query(client, &dblink, &[&role]).await?),
        activity_objects,
        prepared_objects,
    })
}

async fn views(client: &Client, role: &str, oids: &[u32]) -> Result<Vec<ViewInfo>, AuditError> {
    // Views that read tenant tables, directly or through other views.
    let sql = "WITH RECURSIVE reads(view, base) AS ( \
                 SELECT rw.ev_class, d.refobjid FROM pg_catalog.pg_rewrite rw \
                 JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = rw.oid \
                 AND d.refclassid = 'pg_catalog.pg_class'::regclass \
                 WHERE d.refobjid = ANY($2::oid[]) AND rw.ev_class <> d.refobjid \
               UNION \
                 SELECT rw.ev_class, reads.base FROM reads \
                 JOIN pg_catalog.pg_depend d ON d.refobjid = reads.view AND d.classid = 'pg_catalog.pg_rewrite'::regclass \
                 AND d.refclassid = 'pg_catalog.pg_class'::regclass \
                 JOIN pg_catalog.pg_rewrite rw ON rw.oid = d.objid WHERE rw.ev_class <> reads.view) \
               SELECT pg_catalog.format('%I.%I', n.nspname, v.relname), v.relkind = 'm', \
               pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(v.relowner)), \
               pg_catalog.pg_has_role($1::name, v.relowner, 'MEMBER'), \
               COALESCE(pg_catalog.array_to_string(v.reloptions, ',') ~* 'security_invoker=(true|on|yes|1)', false), \
               pg_catalog.has_table_privilege($1::name, v.oid, 'SELECT'), \
               ARRAY(SELECT DISTINCT pg_catalog.format('%I.%I', bn.nspname, b.relname) FROM reads r2 \
                     JOIN pg_catalog.pg_class b ON b.oid = r2.base JOIN pg_catalog.pg_namespace bn ON bn.oid = b.relnamespace \
                     WHERE r2.view = v.oid ORDER BY 1) \
               FROM pg_catalog.pg_class v JOIN pg_catalog.pg_namespace n ON n.oid = v.relnamespace \
               WHERE v.relkind IN ('v', 'm') AND v.oid IN (SELECT view FROM reads) ORDER BY 1";
    let rows = query(client, sql, &[&role, &oids]).await?;
    Ok(rows
        .iter()
        .map(|r| ViewInfo {
            name: r.get(0),
            materialized: r.get(1),
            owner: r.get(2),
            owned_by_role: r.get(3),
            security_invoker: r.get(4),
            selectable: r.get(5),
            reads: r.get(6),
        })
        .collect())
}

async fn setting_functions(client: &Client, role: &str, setting: &str) -> Result<Vec<(String, bool)>, AuditError> {
    let sql = format!(
        "SELECT {SIGNATURE}, pg_catalog.has_function_privilege($1::name, p.oid, 'EXECUTE') \
         FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
         WHERE EXISTS (SELECT 1 FROM pg_catalog.unnest(p.proconfig) c \
                             WHERE pg_catalog.lower(pg_catalog.split_part(c, '=', 1)) = $2::text) ORDER BY 1"
    );
    let rows = query(client, &sql, &[&role, &setting]).await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

async fn unpinned_definers(client: &Client, role: &str) -> Result<Vec<String>, AuditError> {
    let sql = format!(
        "SELECT {SIGNATURE} FROM pg_catalog.pg_proc p \
         JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
         WHERE p.prosecdef AND {USER_SCHEMAS} AND pg_catalog.has_function_privilege($1::name, p.oid, 'EXECUTE') \
         AND NOT EXISTS (SELECT 1 FROM pg_catalog.unnest(p.proconfig) c WHERE c ~* '^search_path=') \
         AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_proc'::regclass \
                         AND d.objid = p.oid AND d.deptype = 'e') ORDER BY 1"
    );
    let rows = query(client, &sql, &[&role]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

async fn role_settings(client: &Client, role: &str, setting: &str) -> Result<Vec<RoleSetting>, AuditError> {
    let sql = "SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(s.setrole)) END, \
               s.setdatabase <> 0, pg_catalog.substr(c, pg_catalog.strpos(c, '=') + 1) \
               FROM pg_catalog.pg_db_role_setting s, pg_catalog.unnest(s.setconfig) c \
               WHERE pg_catalog.lower(pg_catalog.split_part(c, '=', 1)) = $2::text \
               AND s.setdatabase IN (0, (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())) \
               AND s.setrole IN (0, (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $1::name)) ORDER BY 1, 2";
    let rows = query(client, sql, &[&role, &setting]).await?;
    Ok(rows.iter().map(|r| RoleSetting { role: r.get(0), this_database: r.get(1), value: r.get(2) }).collect())
}

async fn server_setting_value(client: &Client, setting: &str) -> Result<Option<String>, AuditError> {
    // Placeholder settings are not in pg_settings: read this session's value, and blame the
    // server configuration when no database or role default of this session explains it.
    let sql = "SELECT NULLIF(pg_catalog.current_setting($1::text, true), ''), \
               EXISTS (SELECT 1 FROM pg_catalog.pg_db_role_setting s, pg_catalog.unnest(s.setconfig) c \
                       WHERE pg_catalog.lower(pg_catalog.split_part(c, '=', 1)) = $1::text \
                       AND s.setdatabase IN (0, (SELECT oid FROM pg_catalog.pg_database \
                                                 WHERE datname = pg_catalog.current_database())) \
                       AND s.setrole IN (0, (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)))";
    let rows = query(client, sql, &[&setting]).await?;
    Ok(rows.first().and_then(|r| if r.get(1) { None } else { r.get(0) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majors() {
        assert_eq!(major_of(150010), 15);
        assert_eq!(major_of(90613), 906);
        assert_eq!(major_of(180001), 18);
    }

    #[test]
    fn labels_name_partitions_and_children() {
        let mut t = TenantTable { name: "public.e_2026".into(), parent: Some("public.e".into()), ..Default::default() };
        t.is_partition = true;
        assert_eq!(t.label(), "partition public.e_2026 (of public.e)");
        t.is_partition = false;
        assert_eq!(t.label(), "table public.e_2026 (inherits public.e)");
    }
}
