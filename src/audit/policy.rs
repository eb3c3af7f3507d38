//! `pgtenant policy`: the SQL that puts every tenant table under row-level security, generated
//! from a [`Catalog`]. Pure; running its output twice changes nothing the second time.
//!
//! For each table with the tenant column: ENABLE and FORCE ROW LEVEL SECURITY, the four
//! per-command policies (`pgtenant_select`, `_insert`, `_update`, `_delete`, each dropped and
//! re-created) comparing the column to `(SELECT NULLIF(current_setting('<setting>', true), '')::<type>)`
//! (a subquery, so it is evaluated once per query, not once per row; `NULLIF` so an unset
//! tenant matches no rows instead of failing), an index led by the tenant column when none
//! exists, and the grants the role needs. `--harden` adds the database hardening of SECURITY.md.
//! `--signed` puts the signed-context setup ([`super::signed`]) first and makes every policy
//! compare the column to `(SELECT pgtenant.current_tenant())::<type>` instead of the setting.

use std::fmt::Write as _;

use super::catalog::{Catalog, Scope, TenantTable};
use super::literal;
use super::signed::{self, CURRENT_TENANT};

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

/// Where the policies take the tenant from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantSource<'a> {
    /// The tenant setting itself (plain mode).
    Setting(&'a str),
    /// `pgtenant.current_tenant()`, which checks the proof (signed mode).
    Signed,
}

impl<'a> TenantSource<'a> {
    /// The source for `catalog`: signed when it has the signed context's function.
    pub fn of(catalog: &Catalog, setting: &'a str) -> TenantSource<'a> {
        match catalog.signed.as_ref().is_some_and(|s| s.function.is_some()) {
            true => TenantSource::Signed,
            false => TenantSource::Setting(setting),
        }
    }
}

/// The tenant of the current query, as the column's type: a subquery, so it is evaluated
/// once per query.
pub fn tenant_value(source: TenantSource<'_>, column_type: &str) -> String {
    match source {
        TenantSource::Setting(setting) => {
            format!("(SELECT NULLIF(current_setting({}, true), '')::{column_type})", literal(setting))
        }
        TenantSource::Signed => format!("(SELECT {CURRENT_TENANT})::{column_type}"),
    }
}

/// `<column> = <tenant value>`: the condition of every policy.
pub fn tenant_condition(column_ident: &str, source: TenantSource<'_>, column_type: &str) -> String {
    format!("{column_ident} = {}", tenant_value(source, column_type))
}

/// DROP + CREATE of the policy for one command (`SELECT`, `INSERT`, `UPDATE`, `DELETE`).
pub fn policy_sql(
    table: &TenantTable,
    role_ident: &str,
    column_ident: &str,
    source: TenantSource<'_>,
    command: &str,
) -> String {
    let name = format!("{POLICY_PREFIX}{}", command.to_ascii_lowercase());
    let cond = tenant_condition(column_ident, source, &table.column_type);
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

/// What the script holds besides the policies.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Append the database hardening of SECURITY.md (`--harden`).
    pub harden: bool,
    /// The signed tenant context, with this key-holder role (quoted; `--signed --key-owner`).
    pub signed: Option<String>,
}

/// The whole script for `catalog`: with `options.signed`, the signed-context setup first and
/// policies that call `pgtenant.current_tenant()`; with `options.harden`, the hardening too.
pub fn generate(catalog: &Catalog, scope: &Scope, options: &Options) -> String {
    let role = catalog.role.as_ref().map_or(scope.role.as_str(), |r| r.ident.as_str());
    let source = match options.signed {
        Some(_) => TenantSource::Signed,
        None => TenantSource::Setting(&scope.setting),
    };
    let mut out = header(catalog, scope, source);
    out.push_str("BEGIN;\n\n");
    if let Some(owner) = &options.signed {
        out.push_str(&signed::signed_setup_sql(catalog, scope, role, owner));
        out.push('\n');
    }
    let mut schemas: Vec<&str> = catalog.tables.iter().map(|t| t.schema.as_str()).collect();
    schemas.dedup();
    schemas.sort_unstable();
    schemas.dedup();
    for schema in schemas {
        let _ = writeln!(out, "GRANT USAGE ON SCHEMA {schema} TO {role};");
    }
    out.push('\n');
    for table in &catalog.tables {
        out.push_str(&table_sql(catalog, scope, table, role, source));
        out.push('\n');
    }
    if options.harden {
        out.push_str(&hardening_sql(catalog, role));
        out.push('\n');
    }
    out.push_str("COMMIT;\n");
    if options.signed.is_some() {
        out.push_str(&signed::key_loading_comment());
    }
    out
}

fn header(catalog: &Catalog, scope: &Scope, source: TenantSource<'_>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "-- pgtenant policy for database {} (PostgreSQL {})",
        catalog.database,
        super::checks::short_version(&catalog.server_version)
    );
    let _ = writeln!(out, "-- tenant column {}, setting {}, role {}", scope.column, scope.setting, scope.role);
    // The signed setup creates a role and an extension and sets superuser-only role settings.
    let _ = writeln!(
        out,
        "-- Idempotent: running it again changes nothing. Apply it as {}:",
        if source == TenantSource::Signed { "a superuser" } else { "the tables' owner or a superuser" }
    );
    out.push_str(
        "--   psql \"$DATABASE_URL\" -v ON_ERROR_STOP=1 -f policy.sql\n\
         -- FORCE ROW LEVEL SECURITY applies the policies to the tables' owner too: run data\n\
         -- migrations that must see every tenant as a superuser or a BYPASSRLS role.\n\
         -- Creating an index locks writes to its table: on large tables, create it beforehand\n\
         -- with CREATE INDEX CONCURRENTLY (outside a transaction) under the same name.\n--\n",
    );
    let names: Vec<&str> = catalog.tables.iter().map(|t| t.name.as_str()).collect();
    let _ = writeln!(out, "-- Tables with the tenant column ({}): {}", names.len(), list_or_none(&names));
    let others: Vec<&str> = catalog.other_tables.iter().map(|(n, _)| n.as_str()).collect();
    let _ = writeln!(out, "-- Tables without it, left alone ({}): {}", others.len(), list_or_none(&others));
    match source {
        TenantSource::Signed => out.push_str(
            "--\n-- Signed mode: run the proxies with tenant.mode = \"signed\" and load their key (see the end).\n\
             -- Until then every policy matches no rows.\n",
        ),
        // Going back from signed to plain policies must be a choice, not an accident.
        TenantSource::Setting(_) if TenantSource::of(catalog, &scope.setting) == TenantSource::Signed => out.push_str(
            "--\n-- This database has the signed tenant context (pgtenant.current_tenant()): these plain\n\
             -- policies replace signed ones, and SQL can forge the plain setting. Use --signed to keep it.\n",
        ),
        TenantSource::Setting(_) => {}
    }
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

fn table_sql(catalog: &Catalog, scope: &Scope, table: &TenantTable, role: &str, source: TenantSource<'_>) -> String {
    let column = &catalog.column_ident;
    let mut out = format!("-- {}\n", table.label());
    let _ = writeln!(out, "ALTER TABLE {} ENABLE ROW LEVEL SECURITY;", table.name);
    let _ = writeln!(out, "ALTER TABLE {} FORCE ROW LEVEL SECURITY;", table.name);
    for (_, command) in COMMANDS {
        out.push_str(&policy_sql(table, role, column, source, command));
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
        let sql = generate(&catalog(), &scope(), &Options::default());
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
        let sql = generate(&catalog(), &scope(), &Options::default());
        assert!(sql.contains("CREATE INDEX IF NOT EXISTS a_tenant_id_idx ON public.a (tenant_id);"), "{sql}");
        assert!(!sql.contains("ON public.b (tenant_id)"), "{sql}");
        assert!(sql.contains("GRANT USAGE ON SEQUENCE public.b_id_seq TO app_user;"), "{sql}");
    }

    #[test]
    fn hardening_is_optional() {
        assert!(!generate(&catalog(), &scope(), &Options::default()).contains("REVOKE TEMPORARY"));
        let sql = generate(&catalog(), &scope(), &Options { harden: true, signed: None });
        assert!(sql.contains("REVOKE TEMPORARY ON DATABASE app FROM PUBLIC, app_user;"), "{sql}");
        assert!(sql.contains("GRANT EXECUTE ON FUNCTION pg_catalog.set_config(text, text, boolean) TO app_user;"));
    }

    fn signed() -> Options {
        Options { harden: false, signed: Some("pgtenant_keyholder".into()) }
    }

    #[test]
    fn signed_policies_call_the_verifying_function_once_per_query() {
        let sql = generate(&catalog(), &scope(), &signed());
        let cond = "tenant_id = (SELECT pgtenant.current_tenant())::uuid";
        assert!(sql.contains(&format!("FOR SELECT TO app_user\n    USING ({cond});")), "{sql}");
        assert!(
            sql.contains(&format!("FOR UPDATE TO app_user\n    USING ({cond})\n    WITH CHECK ({cond});")),
            "{sql}"
        );
        assert!(!sql.contains("NULLIF(current_setting('app.current_tenant_id', true), '')::uuid"), "{sql}");
        // The function exists before the first policy that calls it, inside the transaction.
        let setup = sql.find("CREATE OR REPLACE FUNCTION pgtenant.current_tenant()").expect("setup");
        let first_policy = sql.find("CREATE POLICY").expect("policies");
        assert!(sql.find("BEGIN;").unwrap() < setup && setup < first_policy, "{sql}");
        let commit = sql.find("COMMIT;\n").expect("commit");
        assert!(sql[commit..].contains("add_signing_key(:'key')"), "the key comment comes last:\n{sql}");
        assert!(sql.contains("Signed mode: run the proxies with tenant.mode = \"signed\""), "{sql}");
    }

    #[test]
    fn signed_and_harden_go_together() {
        let sql = generate(&catalog(), &scope(), &Options { harden: true, ..signed() });
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS pgtenant.signing_keys"), "{sql}");
        assert!(sql.contains("REVOKE USAGE ON LANGUAGE plpgsql FROM PUBLIC, app_user;"), "{sql}");
        assert!(sql.find("-- Hardening").unwrap() < sql.find("COMMIT;").unwrap(), "{sql}");
    }

    #[test]
    fn plain_policies_for_a_signed_database_say_what_they_replace() {
        let mut c = catalog();
        assert!(!generate(&c, &scope(), &Options::default()).contains("signed tenant context"));
        c.signed = Some(crate::audit::catalog::SignedSetup {
            function: Some(crate::audit::catalog::SignedFunction::default()),
            ..Default::default()
        });
        let sql = generate(&c, &scope(), &Options::default());
        assert!(sql.contains("This database has the signed tenant context"), "{sql}");
        assert!(!sql.contains("pgtenant.current_tenant())::uuid"), "{sql}");
    }

    #[test]
    fn index_names_are_cut_and_quoted() {
        assert_eq!(index_name("tool_calls", "tenant_id"), "tool_calls_tenant_id_idx");
        assert_eq!(index_name("Calls", "tenant_id"), "\"Calls_tenant_id_idx\"");
        assert_eq!(index_name(&"x".repeat(70), "tenant_id").len(), 63);
    }
}
