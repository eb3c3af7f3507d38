//! The ways around the proxy: SQL the server runs but the client never sends as text (functions
//! the role creates, DO blocks, built-ins that run SQL text, dblink), functions and defaults that
//! set the tenant setting, other sessions' query texts, views and definer functions that read
//! tenant tables with someone else's privileges.

use crate::audit::catalog::{Catalog, RoleSetting, Scope};
use crate::audit::literal;
use crate::audit::policy::SET_CONFIG;
use crate::audit::report::{Finding, Severity};
use crate::audit::signed::{CURRENT_TENANT, SCHEMA as SIGNED_SCHEMA};

use super::public_and;

/// All bypass checks (not run for a superuser role). With `signed_enforced` (the signed tenant
/// context holds), code that changes the tenant setting reaches no other tenant's rows: the
/// ways to run such code are then info only.
pub fn check(catalog: &Catalog, scope: &Scope, signed_enforced: bool) -> Vec<Finding> {
    let role = catalog.role.as_ref().map_or(scope.role.as_str(), |r| r.ident.as_str());
    let mut findings = code_paths(catalog, role, signed_enforced);
    findings.extend(functions_that_run_sql(catalog, role));
    findings.extend(session_texts(catalog, role));
    findings.extend(setting_sources(catalog, scope, role));
    findings.extend(views(catalog, role));
    findings.extend(definers(catalog));
    findings
}

/// Ways to create code whose body the proxy never inspects.
fn code_paths(catalog: &Catalog, role: &str, signed_enforced: bool) -> Vec<Finding> {
    let p = &catalog.privileges;
    let db = format!("database {}", catalog.database);
    let (severity, signed_note) = match signed_enforced {
        true => (Severity::Info, " (signed tenant context: without a proof that reaches no other tenant's rows)"),
        false => (Severity::Unsafe, ""),
    };
    let mut findings = Vec::new();
    if p.temp {
        let why = format!("the role has TEMPORARY: it can create functions in pg_temp whose bodies run SET or set_config on the tenant setting{signed_note}");
        let fix = format!("REVOKE TEMPORARY ON DATABASE {} FROM {};", catalog.database_ident, public_and(role));
        findings.push(Finding::new("bypass.temp", severity, &db, why).fix(fix));
    }
    // CREATE on the signed context's own schema is checks::signed's `signed.schema_create`.
    let signed_schema = |s: &String| catalog.signed.is_some() && s == SIGNED_SCHEMA;
    for schema in p.create_schemas.iter().filter(|s| !signed_schema(s)) {
        let why = format!(
            "the role can CREATE in schema {schema}: functions and views it creates can change the tenant setting{signed_note}"
        );
        let fix = format!("REVOKE CREATE ON SCHEMA {schema} FROM {};", public_and(role));
        findings.push(Finding::new("bypass.create_schema", severity, format!("schema {schema}"), why).fix(fix));
    }
    for language in &p.languages {
        let why = format!(
            "the role can use {language}: a DO block runs dynamic SQL (EXECUTE 'SET ...') the proxy never sees{signed_note}"
        );
        let fix = format!("REVOKE USAGE ON LANGUAGE {language} FROM {};", public_and(role));
        findings.push(Finding::new("bypass.language", severity, format!("language {language}"), why).fix(fix));
    }
    if p.set_config_public {
        let why = "set_config is executable by PUBLIC: keep it for the pooled role only (pgtenant needs it)";
        let fix = format!(
            "REVOKE EXECUTE ON FUNCTION {SET_CONFIG} FROM PUBLIC;\nGRANT EXECUTE ON FUNCTION {SET_CONFIG} TO {role};"
        );
        findings
            .push(Finding::new("bypass.set_config", Severity::Warning, "function pg_catalog.set_config", why).fix(fix));
    }
    findings
}

/// Built-ins that run SQL given as text, and dblink.
fn functions_that_run_sql(catalog: &Catalog, role: &str) -> Vec<Finding> {
    let p = &catalog.privileges;
    let revoke = |f: &str| format!("REVOKE EXECUTE ON FUNCTION {f} FROM {};", public_and(role));
    let mut findings: Vec<Finding> = p
        .sql_text_functions
        .iter()
        .map(|f| {
            let why = "it runs SQL given as text: pgtenant refuses direct calls, but a function body or view can still call it";
            Finding::new("bypass.sql_text_function", Severity::Warning, format!("function {f}"), why).fix(revoke(f))
        })
        .collect();
    if !p.dblink_functions.is_empty() {
        let why = "the role can run dblink: SQL sent over another connection (with its own tenant setting) is never seen by the proxy";
        let fix: Vec<String> = p.dblink_functions.iter().map(|f| revoke(f)).collect();
        findings.push(Finding::new("bypass.dblink", Severity::Warning, "extension dblink", why).fix(fix.join("\n")));
    }
    findings
}

/// Other sessions' query texts and the connection's prepared statements.
fn session_texts(catalog: &Catalog, role: &str) -> Vec<Finding> {
    let p = &catalog.privileges;
    let revoke = |objects: &[String]| -> String {
        let lines: Vec<String> = objects
            .iter()
            .map(|o| match o.contains('(') {
                true => format!("REVOKE EXECUTE ON FUNCTION {o} FROM {};", public_and(role)),
                false => format!("REVOKE SELECT ON {o} FROM {};", public_and(role)),
            })
            .collect();
        lines.join("\n")
    };
    // The views call the functions with the caller's privileges: the functions decide.
    let readable = |objects: &[String]| objects.iter().any(|o| o.contains('('));
    let mut findings = Vec::new();
    if readable(&p.activity_objects) {
        let why = format!(
            "the role can read other sessions' query texts ({}): every tenant's, since they share the role",
            p.activity_objects.join(", ")
        );
        let f = Finding::new("bypass.stat_activity", Severity::Warning, "view pg_catalog.pg_stat_activity", why);
        findings.push(f.fix(revoke(&p.activity_objects)));
    }
    if readable(&p.prepared_objects) {
        let why = format!(
            "the role can list statements prepared on its connection ({}): on a pooled connection, other tenants' texts",
            p.prepared_objects.join(", ")
        );
        let f = Finding::new(
            "bypass.prepared_statements",
            Severity::Warning,
            "view pg_catalog.pg_prepared_statements",
            why,
        );
        findings.push(f.fix(revoke(&p.prepared_objects)));
    }
    findings
}

/// Functions, role or database defaults and server settings that give the setting a value.
fn setting_sources(catalog: &Catalog, scope: &Scope, role: &str) -> Vec<Finding> {
    let setting = &scope.setting;
    let mut findings = Vec::new();
    for (function, executable) in &catalog.setting_functions {
        let (severity, who) = match executable {
            true => (Severity::Unsafe, "the role can call it"),
            false => (Severity::Warning, "the role cannot call it now"),
        };
        let why = format!("it has SET {setting}: it runs as whatever tenant it names, for any caller ({who})");
        let fix = format!("ALTER FUNCTION {function} RESET {setting};");
        findings.push(Finding::new("function.set_setting", severity, format!("function {function}"), why).fix(fix));
    }
    for entry in &catalog.role_settings {
        let (object, fix) = role_setting_fix(entry, &catalog.database, &catalog.database_ident, setting);
        let why = format!(
            "{setting} defaults to {} for new sessions of {role}: a connection with no tenant context acts as that tenant",
            literal(&entry.value)
        );
        findings.push(Finding::new("setting.role_default", Severity::Unsafe, object, why).fix(fix));
    }
    if let Some(value) = &catalog.server_setting_value {
        let why = format!(
            "{setting} = {} in every new session (postgresql.conf, ALTER SYSTEM or the command line): a session with no tenant acts as that tenant",
            literal(value)
        );
        let fix =
            format!("-- remove {setting} from postgresql.conf, postgresql.auto.conf or the command line, then reload");
        findings.push(Finding::new("setting.server_default", Severity::Unsafe, "server settings", why).fix(fix));
    }
    findings
}

/// The object and fix for one `pg_db_role_setting` entry.
fn role_setting_fix(entry: &RoleSetting, database: &str, database_ident: &str, setting: &str) -> (String, String) {
    match (&entry.role, entry.this_database) {
        (Some(r), true) => {
            (format!("role {r}"), format!("ALTER ROLE {r} IN DATABASE {database_ident} RESET {setting};"))
        }
        (Some(r), false) => (format!("role {r}"), format!("ALTER ROLE {r} RESET {setting};")),
        (None, true) => (format!("database {database}"), format!("ALTER DATABASE {database_ident} RESET {setting};")),
        (None, false) => ("every role".to_string(), format!("ALTER ROLE ALL RESET {setting};")),
    }
}

/// Views and materialized views that read tenant tables with their owner's privileges.
fn views(catalog: &Catalog, role: &str) -> Vec<Finding> {
    let mut findings = Vec::new();
    for view in catalog.views.iter().filter(|v| v.selectable && !v.owned_by_role) {
        let reads = view.reads.join(", ");
        if view.materialized {
            let why = format!(
                "materialized view over {reads}: its rows were computed once, as {}, for all tenants; RLS does not apply to it",
                view.owner
            );
            let fix = format!("REVOKE SELECT ON {} FROM {};", view.name, public_and(role));
            findings
                .push(Finding::new("view.materialized", Severity::Unsafe, format!("view {}", view.name), why).fix(fix));
        } else if !view.security_invoker {
            let why = format!(
                "view over {reads} without security_invoker: it reads them as its owner {}, so the policies for {role} do not apply",
                view.owner
            );
            let mut fix = format!("ALTER VIEW {} SET (security_invoker = true);", view.name);
            if catalog.major() < 15 {
                fix.push_str("  -- PostgreSQL 15 or later; before that, drop the view or revoke SELECT on it");
            }
            findings.push(
                Finding::new("view.not_security_invoker", Severity::Unsafe, format!("view {}", view.name), why)
                    .fix(fix),
            );
        }
    }
    findings
}

/// SECURITY DEFINER functions the role can call that do not pin `search_path`.
fn definers(catalog: &Catalog) -> Vec<Finding> {
    // The signed context's function is `signed.function_search_path`, which is unsafe there.
    let signed_function = |f: &String| catalog.signed.is_some() && f == CURRENT_TENANT;
    catalog
        .unpinned_definers
        .iter()
        .filter(|f| !signed_function(f))
        .map(|f| {
            let why = "SECURITY DEFINER without a pinned search_path: objects the caller creates (pg_temp first) can hijack it and run as its owner";
            let fix = format!("ALTER FUNCTION {f} SET search_path = pg_catalog, pg_temp;  -- add the schemas it uses before pg_temp");
            Finding::new("function.definer_search_path", Severity::Warning, format!("function {f}"), why).fix(fix)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::catalog::{Privileges, RoleInfo, ViewInfo};

    fn scope() -> Scope {
        Scope { role: "app_user".into(), column: "tenant_id".into(), setting: "app.current_tenant_id".into() }
    }

    fn catalog() -> Catalog {
        Catalog {
            database: "app".into(),
            database_ident: "app".into(),
            server_version_num: 150018,
            role: Some(RoleInfo { ident: "app_user".into(), ..RoleInfo::default() }),
            privileges: Privileges { set_config: true, ..Privileges::default() },
            ..Catalog::default()
        }
    }

    fn ids(c: &Catalog) -> Vec<(&'static str, Severity)> {
        check(c, &scope(), false).iter().map(|f| (f.id, f.severity)).collect()
    }

    #[test]
    fn a_hardened_database_is_clean() {
        assert_eq!(ids(&catalog()), []);
    }

    #[test]
    fn code_paths_are_unsafe() {
        let mut c = catalog();
        c.privileges.temp = true;
        c.privileges.create_schemas = vec!["public".into()];
        c.privileges.languages = vec!["plpgsql".into()];
        c.privileges.set_config_public = true;
        assert_eq!(
            ids(&c),
            [
                ("bypass.temp", Severity::Unsafe),
                ("bypass.create_schema", Severity::Unsafe),
                ("bypass.language", Severity::Unsafe),
                ("bypass.set_config", Severity::Warning)
            ]
        );
    }

    #[test]
    fn code_paths_are_info_when_the_signed_context_holds() {
        let mut c = catalog();
        c.privileges.temp = true;
        c.privileges.create_schemas = vec!["public".into(), "pgtenant".into()];
        c.privileges.languages = vec!["plpgsql".into()];
        let found = check(&c, &scope(), true);
        assert_eq!(
            found.iter().map(|f| (f.id, f.severity)).collect::<Vec<_>>(),
            [
                ("bypass.temp", Severity::Info),
                ("bypass.create_schema", Severity::Info),
                ("bypass.create_schema", Severity::Info),
                ("bypass.language", Severity::Info)
            ]
        );
        assert!(found[0].why.contains("signed tenant context"), "{}", found[0].why);
        // With the signed setup, CREATE on its schema is signed.schema_create, not repeated here.
        c.signed = Some(crate::audit::catalog::SignedSetup::default());
        let schemas: Vec<String> = check(&c, &scope(), false).into_iter().map(|f| f.object).collect();
        assert!(!schemas.iter().any(|o| o == "schema pgtenant"), "{schemas:?}");
    }

    #[test]
    fn session_texts_need_the_function() {
        let mut c = catalog();
        c.privileges.activity_objects = vec!["pg_catalog.pg_stat_activity".into()];
        assert_eq!(ids(&c), [], "the view alone fails without the function");
        c.privileges.activity_objects.push("pg_stat_get_activity(integer)".into());
        assert_eq!(ids(&c), [("bypass.stat_activity", Severity::Warning)]);
        let fix = &check(&c, &scope(), false)[0].fix;
        assert!(fix.contains("REVOKE SELECT ON pg_catalog.pg_stat_activity FROM PUBLIC, app_user;"), "{fix}");
        assert!(
            fix.contains("REVOKE EXECUTE ON FUNCTION pg_stat_get_activity(integer) FROM PUBLIC, app_user;"),
            "{fix}"
        );
    }

    #[test]
    fn setting_sources_are_unsafe() {
        let mut c = catalog();
        c.setting_functions = vec![("public.as_b()".into(), true), ("admin.x()".into(), false)];
        c.role_settings = vec![RoleSetting { role: Some("app_user".into()), this_database: false, value: "b".into() }];
        assert_eq!(
            ids(&c),
            [
                ("function.set_setting", Severity::Unsafe),
                ("function.set_setting", Severity::Warning),
                ("setting.role_default", Severity::Unsafe)
            ]
        );
        assert_eq!(check(&c, &scope(), false)[2].fix, "ALTER ROLE app_user RESET app.current_tenant_id;");
    }

    #[test]
    fn a_server_wide_value_is_unsafe() {
        let mut c = catalog();
        c.server_setting_value = Some("x".into());
        assert_eq!(ids(&c), [("setting.server_default", Severity::Unsafe)]);
        c.server_setting_value = None;
        c.role_settings = vec![RoleSetting { role: None, this_database: true, value: "b".into() }];
        let found = check(&c, &scope(), false);
        assert_eq!((found[0].id, found[0].object.as_str()), ("setting.role_default", "database app"));
        assert_eq!(found[0].fix, "ALTER DATABASE app RESET app.current_tenant_id;");
    }

    #[test]
    fn views_read_as_their_owner() {
        let mut c = catalog();
        let view =
            ViewInfo { name: "public.v".into(), owner: "postgres".into(), selectable: true, ..ViewInfo::default() };
        c.views = vec![view.clone()];
        assert_eq!(ids(&c), [("view.not_security_invoker", Severity::Unsafe)]);
        c.views = vec![ViewInfo { security_invoker: true, ..view.clone() }];
        assert_eq!(ids(&c), []);
        c.views = vec![ViewInfo { owned_by_role: true, ..view.clone() }];
        assert_eq!(ids(&c), []);
        c.views = vec![ViewInfo { materialized: true, security_invoker: true, ..view }];
        assert_eq!(ids(&c), [("view.materialized", Severity::Unsafe)]);
    }

    #[test]
    fn unpinned_definers_are_flagged() {
        let mut c = catalog();
        c.unpinned_definers = vec!["public.f()".into(), "pgtenant.current_tenant()".into()];
        assert_eq!(ids(&c), [("function.definer_search_path", Severity::Warning); 2]);
        c.signed = Some(crate::audit::catalog::SignedSetup::default());
        assert_eq!(ids(&c), [("function.definer_search_path", Severity::Warning)], "signed.function_search_path");
    }
}
