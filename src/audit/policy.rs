//! `pgtenant policy`: the SQL that puts every tenant table under row-level security, generated
//! from a [`Catalog`]. Pure; running its output twice changes nothing the second time.
//!
//! For each table with the tenant column: ENABLE and FORCE ROW LEVEL SECURITY, the four
//! per-command policies (`pgtenant_select`, `_insert`, `_update`, `_delete`, each dropped and
//! re-created) comparing the column to `(SELECT NULLIF(current_setting('<setting>', true), '')::<type>)`
//! (a subquery, so it is evaluated once per query, not once per row; `NULLIF` so an unset
//! tenant matches no rows instead of failing), an index led by the tenant column when none
//! exists, and the grants the role needs. `--harden` adds the database hardening of SECURITY.md.

use std::fmt::Write as _;

use super::catalog::{Catalog, Scope, TenantTable};
use super::literal;

/// The commands that get a policy each: (`polcmd` letter, SQL keyword).
pub const COMMANDS: [(char, &str); 4] = [('r', "SELECT"), ('a', "INSERT"), ('w', "UPDATE"), ('d', "DELETE")];

/// Prefix of the policies this command creates (and drops before re-creating).
pub const POLICY_PREFIX: &str = "pgtenant_";

/// Built-ins that run SQL given as text; revoked by `--harden`.
pub const SQL_TEXT_FUNCTIONS: [&str; 6] = [
    "pg_catalog.query_to_xml(text, boolean, boolean, text)",
    "pg_catalog.query_to_xmlschema(text, boolean, boolean, text)",
    "pg_catalog.query_to_xml_and_xmlschema(text, boolean, boolean, text)",
    "pg_catalog.ts_stat(text)",
    "pg_catalog.ts_stat(text, text)",
    "pg_catalog.ts_rewrite(tsquery, text)",
];

/// Functions that show other sessions' query texts or the connection's prepared statements.
pub const SESSION_TEXT_FUNCTIONS: [&str; 3] = [
    "pg_catalog.pg_stat_get_activity(integer)",
    "pg_catalog.pg_stat_get_backend_activity(integer)",
    "pg_catalog.pg_prepared_statement()",
];

/// `set_config`, which pgtenant itself needs.
pub const SET_CONFIG: &str = "pg_catalog.set_config(text, text, boolean)";

/// The tenant of the current query, as the column's type: evaluated once per query.
pub fn tenant_value(setting: &str, column_type: &str) -> String {
    format!("(SELECT NULLIF(current_setting({}, true), '')::{column_type})", literal(setting))
}

/// `<column> = <tenant value>`: the condition of every policy.
pub fn tenant_condition(column_ident: &str, setting: &str, column_type: &str) -> String {
    format!("{column_ident} = {}", tenant_value(setting, column_type))
}

/// DROP + CREATE of the policy for one command (`SELECT`, `INSERT`, `UPDATE`, `DELETE`).
pub fn policy_sql(table: &TenantTable, role_ident: &str, column_ident: &str, setting: &str, command: &str) -> String {
    let name = format!("{POLICY_PREFIX}{}", command.to_ascii_lowercase());
    let cond = tenant_condition(column_ident, setting, &table.column_type);
    let clauses = match command {
        "INSERT" => format!("WITH CHECK ({cond})"),
        "UPDATE" => format!("USING ({cond})\n    WITH CHECK ({cond})"),
        _ => format!("USING ({cond})"),
    };
    format!(
        "DROP POLICY IF EXISTS {name} ON {t};\n\
         CREATE POLICY {name} ON {t} AS PERMISSIVE FOR {command} TO {role_ident}\n    {clauses};\n",
        t = table.name
    )
}

/// `<table>_<column>_idx`, cut to PostgreSQL's 63 bytes and quoted when needed.
pub fn index_name(relname: &str, column: &str) -> String {
    let mut name = format!("{relname}_{column}_idx");
    while name.len() > 63 {
        name.pop();
    }
    let plain = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// `CREATE INDEX IF NOT EXISTS` on the tenant column.
pub fn index_sql(table: &TenantTable, column: &str, column_ident: &str) -> String {
    format!("CREATE INDEX IF NOT EXISTS {} ON {} ({column_ident});\n", index_name(&table.relname, column), table.name)
}

/// The whole script for `catalog`; with `harden`, the database hardening too.
pub fn generate(catalog: &Catalog, scope: &Scope, harden: bool) -> String {
    let role = catalog.role.as_ref().map_or(scope.role.as_str(), |r| r.ident.as_str());
    let mut out = header(catalog, scope);
    out.push_str("BEGIN;\n\n");
    let mut schemas: Vec<&str> = catalog.tables.iter().map(|t| t.schema.as_str()).collect();
    schemas.dedup();
    schemas.sort_unstable();
    schemas.dedup();
    for schema in schemas {
        let _ = writeln!(out, "GRANT USAGE ON SCHEMA {schema} TO {role};");
    }
    out.push('\n');
    for table in &catalog.tables {
        out.push_str(&table_sql(catalog, scope, table, role));
        out.push('\n');
    }
    if harden {
        out.push_str(&hardening_sql(catalog, role));
        out.push('\n');
    }
    out.push_str("COMMIT;\n");
    out
}

fn header(catalog: &Catalog, scope: &Scope) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "-- pgtenant policy for database {} (PostgreSQL {})",
        catalog.database,
        super::checks::short_version(&catalog.server_version)
    );
    let _ = writeln!(out, "-- tenant column {}, setting {}, role {}", scope.column, scope.setting, scope.role);
    out.push_str(
        "-- Idempotent: running it again changes nothing. Apply it as the tables' owner or a superuser:\n\
         --   psql \"$DATABASE_URL\" -v ON_ERROR_STOP=1 -f policy.sql\n\
         -- FORCE ROW LEVEL SECURITY applies the policies to the tables' owner too: run data\n\
         -- migrations that must see every tenant as a superuser or a BYPASSRLS role.\n\
         -- Creating an index locks writes to its table: on large tables, create it beforehand\n\
         -- with CREATE INDEX CONCURRENTLY (outside a transaction) under the same name.\n--\n",
    );
    let names: Vec<&str> = catalog.tables.iter().map(|t| t.name.as_str()).collect();
    let _ = writeln!(out, "-- Tables with the tenant column ({}): {}", names.len(), list_or_none(&names));
    let others: Vec<&str> = catalog.other_tables.iter().map(|(n, _)| n.as_str()).collect();
    let _ = writeln!(out, "-- Tables without it, left alone ({}): {}", others.len(), list_or_none(&others));
    out.push('\n');
    out
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

fn table_sql(catalog: &Catalog, scope: &Scope, table: &TenantTable, role: &str) -> String {
    let column = &catalog.column_ident;
    let mut out = format!("-- {}\n", table.label());
    let _ = writeln!(out, "ALTER TABLE {} ENABLE ROW LEVEL SECURITY;", table.name);
    let _ = writeln!(out, "ALTER TABLE {} FORCE ROW LEVEL SECURITY;", table.name);
    for (_, command) in COMMANDS {
        out.push_str(&policy_sql(table, role, column, &scope.setting, command));
    }
    match table.indexes.iter().find(|i| i.leads_with_tenant && !i.partial) {
        Some(index) => {
            let _ = writeln!(out, "-- index led by {}: {} (exists)", scope.column, index.name);
        }
        None if parent_gets_index(catalog, table) => {
            let _ = writeln!(out, "-- index led by {}: created through the partitioned parent", scope.column);
        }
        None => out.push_str(&index_sql(table, &scope.column, column)),
    }
    let _ = writeln!(out, "GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {role};", table.name);
    for sequence in &table.sequences {
        let _ = writeln!(out, "GRANT USAGE ON SEQUENCE {sequence} TO {role};");
    }
    out
}

/// Whether `table` is a partition whose partitioned parent is a tenant table (an index created
/// on the parent is created on every partition).
fn parent_gets_index(catalog: &Catalog, table: &TenantTable) -> bool {
    table.is_partition && table.parent.as_deref().and_then(|p| catalog.table(p)).is_some_and(|p| p.partitioned)
}

/// The database hardening of SECURITY.md for `role`: closes the ways around the proxy.
pub fn hardening_sql(catalog: &Catalog, role: &str) -> String {
    let mut out = String::from("-- Hardening (SECURITY.md): close the ways around the proxy.\n");
    let _ = writeln!(out, "ALTER ROLE {role} NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB;");
    let _ = writeln!(out, "REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC, {role};", catalog.database_ident);
    let mut schemas = catalog.privileges.create_schemas.clone();
    if !schemas.iter().any(|s| s == "public") {
        schemas.insert(0, "public".to_string());
    }
    for schema in schemas {
        let _ = writeln!(out, "REVOKE CREATE ON SCHEMA {schema} FROM PUBLIC, {role};");
    }
    let _ = writeln!(out, "REVOKE USAGE ON LANGUAGE plpgsql FROM PUBLIC, {role};");
    let _ = writeln!(out, "REVOKE EXECUTE ON FUNCTION {SET_CONFIG} FROM PUBLIC;");
    let _ = writeln!(out, "GRANT EXECUTE ON FUNCTION {SET_CONFIG} TO {role};  -- pgtenant needs it");
    for function in SQL_TEXT_FUNCTIONS.iter().chain(&SESSION_TEXT_FUNCTIONS) {
        let _ = writeln!(out, "REVOKE EXECUTE ON FUNCTION {function} FROM PUBLIC, {role};");
    }
    let _ = writeln!(out, "REVOKE SELECT ON pg_catalog.pg_stat_activity FROM PUBLIC, {role};");
    let _ = writeln!(out, "REVOKE SELECT ON pg_catalog.pg_prepared_statements FROM PUBLIC, {role};");
    for table in &catalog.tables {
        let _ = writeln!(out, "REVOKE TRUNCATE, REFERENCES, TRIGGER ON {} FROM PUBLIC, {role};", table.name);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::catalog::{Index, RoleInfo};

    fn catalog() -> Catalog {
        let table = |name: &str, relname: &str| TenantTable {
            name: name.into(),
            relname: relname.into(),
            schema: "public".into(),
            column_type: "uuid".into(),
            ..TenantTable::default()
        };
        let mut indexed = table("public.b", "b");
        indexed.indexes.push(Index { name: "b_t".into(), leads_with_tenant: true, ..Index::default() });
        indexed.sequences.push("public.b_id_seq".into());
        Catalog {
            database: "app".into(),
            database_ident: "app".into(),
            server_version: "15.18".into(),
            column_ident: "tenant_id".into(),
            role: Some(RoleInfo { ident: "app_user".into(), ..RoleInfo::default() }),
            tables: vec![table("public.a", "a"), indexed],
            other_tables: vec![("public.plans".into(), true)],
            ..Catalog::default()
        }
    }

    fn scope() -> Scope {
        Scope { role: "app_user".into(), column: "tenant_id".into(), setting: "app.current_tenant_id".into() }
    }

    #[test]
    fn every_table_gets_rls_four_policies_and_grants() {
        let sql = generate(&catalog(), &scope(), false);
        for t in ["public.a", "public.b"] {
            assert!(sql.contains(&format!("ALTER TABLE {t} FORCE ROW LEVEL SECURITY;")), "{sql}");
            for cmd in ["select", "insert", "update", "delete"] {
                assert!(sql.contains(&format!("DROP POLICY IF EXISTS pgtenant_{cmd} ON {t};")), "{sql}");
            }
            assert!(sql.contains(&format!("GRANT SELECT, INSERT, UPDATE, DELETE ON {t} TO app_user;")), "{sql}");
        }
        let cond = "tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid)";
        assert!(sql.contains(&format!("FOR INSERT TO app_user\n    WITH CHECK ({cond});")), "{sql}");
        assert!(
            sql.contains(&format!("FOR UPDATE TO app_user\n    USING ({cond})\n    WITH CHECK ({cond});")),
            "{sql}"
        );
        assert!(sql.contains("Tables without it, left alone (1): public.plans"), "{sql}");
        assert!(sql.starts_with("-- pgtenant policy") && sql.ends_with("COMMIT;\n"), "{sql}");
    }

    #[test]
    fn indexes_only_where_missing() {
        let sql = generate(&catalog(), &scope(), false);
        assert!(sql.contains("CREATE INDEX IF NOT EXISTS a_tenant_id_idx ON public.a (tenant_id);"), "{sql}");
        assert!(!sql.contains("ON public.b (tenant_id)"), "{sql}");
        assert!(sql.contains("GRANT USAGE ON SEQUENCE public.b_id_seq TO app_user;"), "{sql}");
    }

    #[test]
    fn hardening_is_optional() {
        assert!(!generate(&catalog(), &scope(), false).contains("REVOKE TEMPORARY"));
        let sql = generate(&catalog(), &scope(), true);
        assert!(sql.contains("REVOKE TEMPORARY ON DATABASE app FROM PUBLIC, app_user;"), "{sql}");
        assert!(sql.contains("GRANT EXECUTE ON FUNCTION pg_catalog.set_config(text, text, boolean) TO app_user;"));
    }

    #[test]
    fn index_names_are_cut_and_quoted() {
        assert_eq!(index_name("tool_calls", "tenant_id"), "tool_calls_tenant_id_idx");
        assert_eq!(index_name("Calls", "tenant_id"), "\"Calls_tenant_id_idx\"");
        assert_eq!(index_name(&"x".repeat(70), "tenant_id").len(), 63);
    }
}
