//! Checks of the signed tenant context (`pgtenant policy --signed`): nobody but the key holder
//! reads or writes the keys, `pgtenant.current_tenant()` is a pinned, stable SECURITY DEFINER
//! function that really checks the proof, a key is loaded, the policies call the function
//! instead of reading the setting, and the proof stays out of the server log.
//!
//! They run when the function or the key table exists, or when `doctor --signed` expects them.

use crate::audit::catalog::{Behaviour, Catalog, Policy, Scope, SignedFunction, SignedSetup, TenantTable};
use crate::audit::literal;
use crate::audit::policy::{policy_sql, TenantSource, COMMANDS, POLICY_PREFIX};
use crate::audit::report::{Finding, Severity};
use crate::audit::signed::{
    key_loading_snippet, CURRENT_TENANT, DEFAULT_KEY_OWNER, KEY_TABLE, LOG_PARAMETER_SINCE, SCHEMA,
};

use super::public_and;

/// The report object of `pgtenant.current_tenant()`.
pub const FUNCTION_OBJECT: &str = "function pgtenant.current_tenant()";
/// The report object of the key table.
pub const KEY_TABLE_OBJECT: &str = "table pgtenant.signing_keys";
/// The report object of the schema.
pub const SCHEMA_OBJECT: &str = "schema pgtenant";

/// All signed-context checks; with `expect`, a missing setup is itself unsafe.
pub fn check(catalog: &Catalog, scope: &Scope, expect: bool) -> Vec<Finding> {
    let Some(setup) = &catalog.signed else {
        if !expect {
            return Vec::new();
        }
        let why = format!(
            "the signed tenant context is expected (--signed) but neither {CURRENT_TENANT} nor {KEY_TABLE} exists: \
             policies cannot check the proof"
        );
        let fix = "-- run `pgtenant policy --signed` and apply its output as a superuser";
        return vec![Finding::new("signed.missing", Severity::Unsafe, SCHEMA_OBJECT, why).fix(fix)];
    };
    let role = catalog.role.as_ref().map_or(scope.role.as_str(), |r| r.ident.as_str());
    let superuser = catalog.role.as_ref().is_some_and(|r| r.superuser);
    let role_object = format!("role {}", scope.role);
    let mut findings = missing(setup);
    if !superuser {
        // A superuser has every privilege: role.superuser says it once.
        findings.extend(access(setup, role, &role_object));
    }
    if let Some(function) = &setup.function {
        findings.extend(function_checks(function, setup, role));
    }
    findings.extend(keys(setup));
    if setup.function.is_some() {
        for table in &catalog.tables {
            findings.extend(policies(catalog, table, role, &scope.setting));
        }
    }
    findings.extend(log_parameters(catalog, setup, role, &role_object));
    findings
}

/// Whether the signed context holds: its function exists and no signed check found anything
/// unsafe. SQL that changes the tenant setting then reaches no other tenant's rows.
pub fn enforced(catalog: &Catalog, findings: &[Finding]) -> bool {
    catalog.signed.as_ref().is_some_and(|s| s.function.is_some())
        && !findings.iter().any(|f| f.id.starts_with("signed.") && f.severity == Severity::Unsafe)
}

/// The owner the fixes hand objects to: the key table's owner unless that is the role itself.
fn holder<'a>(setup: &'a SignedSetup, role: &str) -> &'a str {
    setup.key_table.as_ref().map(|t| t.owner.as_str()).filter(|o| *o != role).unwrap_or(DEFAULT_KEY_OWNER)
}

fn missing(setup: &SignedSetup) -> Vec<Finding> {
    let fix = "-- run `pgtenant policy --signed` and apply its output as a superuser";
    let mut findings = Vec::new();
    if setup.function.is_none() {
        let why = format!("{KEY_TABLE} exists but {CURRENT_TENANT} does not: no policy can check the proof");
        findings.push(Finding::new("signed.missing", Severity::Unsafe, FUNCTION_OBJECT, why).fix(fix));
    }
    if setup.key_table.is_none() {
        let why = format!("{CURRENT_TENANT} exists but {KEY_TABLE} does not: no proof can be checked");
        findings.push(Finding::new("signed.missing", Severity::Unsafe, KEY_TABLE_OBJECT, why).fix(fix));
    }
    findings
}

/// Ways for the role to read, add or use the keys, or to change what checks them.
fn access(setup: &SignedSetup, role: &str, role_object: &str) -> Vec<Finding> {
    if !setup.member_of_owners.is_empty() {
        // The owner's privileges come with the membership: revoking it is the one fix, so the
        // table, schema and function privileges it implies are not reported again.
        let owners = setup.member_of_owners.join(", ");
        let why = format!(
            "the role is a member of {owners}, which owns the signed context: it can read the keys or replace {CURRENT_TENANT}"
        );
        let fix: Vec<String> = setup.member_of_owners.iter().map(|o| format!("REVOKE {o} FROM {role};")).collect();
        return vec![Finding::new("signed.key_holder_member", Severity::Unsafe, role_object, why).fix(fix.join("\n"))];
    }
    let mut findings = Vec::new();
    if let Some(table) = setup.key_table.as_ref().filter(|t| !t.role_privileges.is_empty()) {
        let why = format!(
            "the role has {} on the signing keys: it can read a key (and sign any tenant) or add its own",
            table.role_privileges.join(", ")
        );
        let fix = format!(
            "REVOKE ALL ON TABLE {KEY_TABLE} FROM {};  -- and revoke from {role} any role that has them",
            public_and(role)
        );
        findings.push(Finding::new("signed.key_table_access", Severity::Unsafe, KEY_TABLE_OBJECT, why).fix(fix));
    }
    if setup.schema_create {
        let why =
            format!("the role can CREATE in schema {SCHEMA}: its objects would sit next to the keys and the function");
        let fix = match setup.schema_owner.as_deref() == Some(role) {
            true => format!("ALTER SCHEMA {SCHEMA} OWNER TO {};", holder(setup, role)),
            false => format!("REVOKE CREATE ON SCHEMA {SCHEMA} FROM {};", public_and(role)),
        };
        findings.push(Finding::new("signed.schema_create", Severity::Unsafe, SCHEMA_OBJECT, why).fix(fix));
    }
    for function in &setup.key_functions {
        let why = "a SECURITY DEFINER function of the key holder that the role can call: it runs with access to the keys (add_signing_key lets the role load its own key)";
        let fix = format!("REVOKE EXECUTE ON FUNCTION {function} FROM {};", public_and(role));
        let object = format!("function {function}");
        findings.push(Finding::new("signed.key_functions", Severity::Unsafe, object, why).fix(fix));
    }
    findings
}

fn function_checks(function: &SignedFunction, setup: &SignedSetup, role: &str) -> Vec<Finding> {
    let f = CURRENT_TENANT;
    let object = FUNCTION_OBJECT;
    let mut findings = Vec::new();
    if !function.security_definer {
        let why = "it is not SECURITY DEFINER: it runs as the caller, so either the role can read the keys or every query fails";
        let fix = format!("ALTER FUNCTION {f} SECURITY DEFINER;");
        findings.push(Finding::new("signed.function_definer", Severity::Unsafe, object, why).fix(fix));
    }
    if !function.search_path_pinned || !function.search_path_writable.is_empty() {
        let why = match function.search_path_pinned {
            false => "it does not pin search_path: objects the caller creates can take the place of the built-ins it calls".to_string(),
            true => format!(
                "its search_path has schemas the role can CREATE in ({}): the role's objects can take the place of the built-ins it calls",
                function.search_path_writable.join(", ")
            ),
        };
        let fix = format!("ALTER FUNCTION {f} SET search_path = pg_catalog, pg_temp;");
        findings.push(Finding::new("signed.function_search_path", Severity::Unsafe, object, why).fix(fix));
    }
    if function.owned_by_role {
        let why = "it is owned by the role: the role can replace its body and return any tenant";
        let fix = format!("ALTER FUNCTION {f} OWNER TO {};", holder(setup, role));
        findings.push(Finding::new("signed.function_owner", Severity::Unsafe, object, why).fix(fix));
    } else if function.owner_superuser {
        let why = format!(
            "it is owned by the superuser {}: it works, but a flaw in it would run with every privilege",
            function.owner
        );
        let fix = format!(
            "ALTER FUNCTION {f} OWNER TO {};  -- a role that owns {KEY_TABLE} and nothing else",
            holder(setup, role)
        );
        findings.push(Finding::new("signed.function_owner", Severity::Warning, object, why).fix(fix));
    }
    match function.volatility {
        'i' => {
            let why = "it is IMMUTABLE: a plan may compute it once and reuse one tenant's value for another";
            let fix = format!("ALTER FUNCTION {f} STABLE;");
            findings.push(Finding::new("signed.function_volatility", Severity::Unsafe, object, why).fix(fix));
        }
        'v' => {
            let why = "it is VOLATILE: it is called for every row, and indexes on the tenant column cannot be used";
            let fix = format!("ALTER FUNCTION {f} STABLE;");
            findings.push(Finding::new("signed.function_volatility", Severity::Warning, object, why).fix(fix));
        }
        _ => {}
    }
    if !function.executable {
        let why = "the role cannot call it: every query of the role on a tenant table fails with permission denied";
        let fix = format!("GRANT USAGE ON SCHEMA {SCHEMA} TO {role};\nGRANT EXECUTE ON FUNCTION {f} TO {role};");
        findings.push(Finding::new("signed.function_denied", Severity::Warning, object, why).fix(fix));
    }
    let recreate = "-- re-create it: apply the output of `pgtenant policy --signed` again";
    match &function.behaviour {
        Behaviour::Refuses => {}
        Behaviour::Trusts => {
            let why = "called with the tenant setting set and no valid proof, it returned that tenant: it does not check the proof, so SQL that sets the setting acts as any tenant";
            findings.push(Finding::new("signed.function_trusts_setting", Severity::Unsafe, object, why).fix(recreate));
        }
        // A missing key table, or an owner or security mode that keeps the function from
        // reading the keys, is reported as such: the failing call only repeats it.
        Behaviour::Fails(_) if setup.key_table.is_none() || function.owned_by_role || !function.security_definer => {}
        Behaviour::Fails(error) => {
            let why = format!("calling it fails ({error}): so does every query of the role on a tenant table");
            let fix = format!("{recreate} (it needs pgcrypto's hmac)");
            findings.push(Finding::new("signed.function_fails", Severity::Warning, object, why).fix(fix));
        }
        Behaviour::Untested => {
            let why = "doctor's user cannot call it (it needs USAGE on the schema and EXECUTE on it and on set_config): whether it checks the proof was not tested";
            let fix = "-- run doctor as a superuser";
            findings.push(Finding::new("signed.function_untested", Severity::Info, object, why).fix(fix));
        }
    }
    findings
}

fn keys(setup: &SignedSetup) -> Vec<Finding> {
    let Some(table) = &setup.key_table else { return Vec::new() };
    match table.rows {
        Some(0) => {
            let why = format!(
                "no signing key is loaded: {CURRENT_TENANT} is always NULL, every query of the role sees no rows"
            );
            let fix = key_loading_snippet();
            vec![Finding::new("signed.no_keys", Severity::Warning, KEY_TABLE_OBJECT, why).fix(fix)]
        }
        Some(_) => Vec::new(),
        None => {
            let why = "doctor's user cannot read the signing keys: whether one is loaded was not checked";
            let fix = "-- run doctor as a superuser (or as the key holder)";
            vec![Finding::new("signed.keys_unreadable", Severity::Info, KEY_TABLE_OBJECT, why).fix(fix)]
        }
    }
}

/// Permissive policies the role can reach that read the tenant setting directly, or call the
/// function outside a `(SELECT ...)`.
fn policies(catalog: &Catalog, table: &TenantTable, role: &str, setting: &str) -> Vec<Finding> {
    let needle = format!("current_setting({}", literal(setting));
    let reachable = || table.policies.iter().filter(|p| p.permissive && p.reachable);
    let reads: Vec<&Policy> =
        reachable().filter(|p| expressions(p).iter().any(|e| e.to_ascii_lowercase().contains(&needle))).collect();
    let unwrapped: Vec<&Policy> =
        reachable().filter(|p| p.calls_signed && expressions(p).iter().any(|e| unwrapped_call(e))).collect();
    let mut findings = Vec::new();
    if !reads.is_empty() {
        let names: Vec<&str> = reads.iter().map(|p| p.name.as_str()).collect();
        let why = format!(
            "{} read{} {setting} directly: SQL can set it (a DO block, a pg_temp function) without a proof, and as a permissive policy it lets that tenant's rows through",
            names.join(", "),
            if names.len() == 1 { "s" } else { "" }
        );
        let fix: Vec<String> = reads.iter().map(|p| replacement(catalog, table, role, p)).collect();
        findings.push(
            Finding::new("signed.policy_reads_setting", Severity::Unsafe, table.label(), why).fix(fix.join("\n")),
        );
    }
    if !unwrapped.is_empty() {
        let names: Vec<&str> = unwrapped.iter().map(|p| p.name.as_str()).collect();
        let why = format!(
            "{} call{} {CURRENT_TENANT} outside a (SELECT ...): it is computed for every row instead of once per query",
            names.join(", "),
            if names.len() == 1 { "s" } else { "" }
        );
        let fix: Vec<String> = unwrapped.iter().map(|p| replacement(catalog, table, role, p)).collect();
        findings
            .push(Finding::new("signed.policy_unwrapped", Severity::Warning, table.label(), why).fix(fix.join("\n")));
    }
    findings
}

/// The SQL that replaces policy `p`: pgtenant's own policies are re-created in signed form.
fn replacement(catalog: &Catalog, table: &TenantTable, role: &str, p: &Policy) -> String {
    let command = COMMANDS.iter().find(|(letter, _)| *letter == p.command).map(|(_, c)| *c);
    match command {
        Some(command) if p.name == format!("{POLICY_PREFIX}{}", command.to_ascii_lowercase()) => {
            policy_sql(table, role, &catalog.column_ident, TenantSource::Signed, command).trim_end().to_string()
        }
        _ => format!(
            "DROP POLICY {} ON {};  -- then compare {} to (SELECT {CURRENT_TENANT})::{} instead",
            p.name, table.name, catalog.column_ident, table.column_type
        ),
    }
}

fn expressions(p: &Policy) -> Vec<&str> {
    p.using.iter().chain(&p.check).map(String::as_str).collect()
}

/// Whether `expr` (as `pg_get_expr` prints it) calls `current_tenant()` other than as
/// `( SELECT [pgtenant.]current_tenant() ...)`.
fn unwrapped_call(expr: &str) -> bool {
    expr.match_indices("current_tenant()").any(|(at, _)| {
        let before = expr[..at].trim_end_matches("pgtenant.").trim_end();
        !before.ends_with("SELECT")
    })
}

/// The log settings that keep the bound proof out of the server log.
fn log_parameters(catalog: &Catalog, setup: &SignedSetup, role: &str, object: &str) -> Option<Finding> {
    if catalog.server_version_num != 0 && catalog.server_version_num < LOG_PARAMETER_SINCE {
        let why =
            "before PostgreSQL 13 every logged statement of the role logs its bound parameters, the proof included";
        let fix = "-- upgrade to PostgreSQL 13 or later; until then keep the role's statements out of the log";
        return Some(Finding::new("signed.log_parameters", Severity::Warning, object, why).fix(fix));
    }
    let logged: Vec<&(String, String)> = setup.log_parameters.iter().filter(|(_, value)| value != "0").collect();
    if logged.is_empty() {
        return None;
    }
    let names: Vec<String> = logged.iter().map(|(name, value)| format!("{name} = {value}")).collect();
    let why = format!(
        "{} for the role: statement logging writes bound parameters, the proof included, to the server log",
        names.join(", ")
    );
    let fix: Vec<String> = logged.iter().map(|(name, _)| format!("ALTER ROLE {role} SET {name} = 0;")).collect();
    Some(Finding::new("signed.log_parameters", Severity::Warning, object, why).fix(fix.join("\n")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::catalog::{KeyTable, RoleInfo};

    const SIGNED: &str = "(tenant_id = (( SELECT pgtenant.current_tenant() AS current_tenant))::uuid)";
    const PLAIN: &str = "(tenant_id = ( SELECT (NULLIF(current_setting('app.current_tenant_id'::text, true), ''::text))::uuid AS \"nullif\"))";

    fn scope() -> Scope {
        Scope { role: "app_user".into(), column: "tenant_id".into(), setting: "app.current_tenant_id".into() }
    }

    fn policy(name: &str, command: char, using: &str) -> Policy {
        Policy {
            name: name.into(),
            command,
            permissive: true,
            applies: true,
            reachable: true,
            using: Some(using.into()),
            check: None,
            calls_signed: using.contains("current_tenant()"),
        }
    }

    /// The setup `pgtenant policy --signed` creates, with one key loaded.
    fn catalog() -> Catalog {
        let function = SignedFunction {
            owner: "pgtenant_keyholder".into(),
            security_definer: true,
            search_path_pinned: true,
            volatility: 's',
            executable: true,
            behaviour: Behaviour::Refuses,
            ..SignedFunction::default()
        };
        let setup = SignedSetup {
            schema_owner: Some("pgtenant_keyholder".into()),
            function: Some(function),
            key_table: Some(KeyTable { owner: "pgtenant_keyholder".into(), rows: Some(1), ..KeyTable::default() }),
            log_parameters: vec![
                ("log_parameter_max_length".into(), "0".into()),
                ("log_parameter_max_length_on_error".into(), "0".into()),
            ],
            ..SignedSetup::default()
        };
        let table = TenantTable {
            name: "public.t".into(),
            column_type: "uuid".into(),
            policies: vec![policy("pgtenant_select", 'r', SIGNED)],
            ..TenantTable::default()
        };
        Catalog {
            server_version_num: 150018,
            column_ident: "tenant_id".into(),
            role: Some(RoleInfo { ident: "app_user".into(), ..RoleInfo::default() }),
            tables: vec![table],
            signed: Some(setup),
            ..Catalog::default()
        }
    }

    fn ids(c: &Catalog) -> Vec<(&'static str, Severity)> {
        check(c, &scope(), false).iter().map(|f| (f.id, f.severity)).collect()
    }

    fn setup(c: &mut Catalog) -> &mut SignedSetup {
        c.signed.as_mut().unwrap()
    }

    fn function(c: &mut Catalog) -> &mut SignedFunction {
        setup(c).function.as_mut().unwrap()
    }

    #[test]
    fn the_generated_setup_is_clean_and_enforced() {
        let c = catalog();
        assert_eq!(ids(&c), []);
        assert!(enforced(&c, &check(&c, &scope(), false)));
    }

    #[test]
    fn a_plain_database_gets_nothing_unless_signed_is_expected() {
        let c = Catalog { signed: None, ..catalog() };
        assert_eq!(ids(&c), []);
        assert!(!enforced(&c, &[]));
        let found = check(&c, &scope(), true);
        assert_eq!(
            found.iter().map(|f| (f.id, f.severity)).collect::<Vec<_>>(),
            [("signed.missing", Severity::Unsafe)]
        );
        let mut c = catalog();
        setup(&mut c).key_table = None;
        function(&mut c).behaviour = Behaviour::Fails("relation does not exist".into());
        assert_eq!(ids(&c), [("signed.missing", Severity::Unsafe)], "the failing call is not repeated");
    }

    #[test]
    fn access_to_the_keys_is_unsafe() {
        let mut c = catalog();
        setup(&mut c).key_table.as_mut().unwrap().role_privileges = vec!["SELECT".into()];
        setup(&mut c).schema_create = true;
        setup(&mut c).key_functions = vec!["pgtenant.add_signing_key(text)".into()];
        let found = check(&c, &scope(), false);
        assert_eq!(
            found.iter().map(|f| (f.id, f.severity)).collect::<Vec<_>>(),
            [
                ("signed.key_table_access", Severity::Unsafe),
                ("signed.schema_create", Severity::Unsafe),
                ("signed.key_functions", Severity::Unsafe)
            ]
        );
        assert!(!enforced(&c, &found));
        setup(&mut c).member_of_owners = vec!["pgtenant_keyholder".into()];
        let found = check(&c, &scope(), false);
        assert_eq!(
            found.iter().map(|f| (f.id, f.severity)).collect::<Vec<_>>(),
            [("signed.key_holder_member", Severity::Unsafe)],
            "the membership explains the rest"
        );
        assert_eq!(found[0].fix, "REVOKE pgtenant_keyholder FROM app_user;");
        c.role.as_mut().unwrap().superuser = true;
        assert_eq!(ids(&c), [], "role.superuser covers a superuser role");
    }

    #[test]
    fn the_function_must_be_a_pinned_stable_definer_not_owned_by_the_role() {
        let mut c = catalog();
        function(&mut c).security_definer = false;
        assert_eq!(ids(&c), [("signed.function_definer", Severity::Unsafe)]);
        let mut c = catalog();
        function(&mut c).search_path_pinned = false;
        assert_eq!(ids(&c), [("signed.function_search_path", Severity::Unsafe)]);
        let mut c = catalog();
        function(&mut c).search_path_writable = vec!["public".into()];
        assert_eq!(ids(&c), [("signed.function_search_path", Severity::Unsafe)]);
        let mut c = catalog();
        function(&mut c).owned_by_role = true;
        function(&mut c).behaviour = Behaviour::Fails("permission denied for table signing_keys".into());
        let found = check(&c, &scope(), false);
        assert_eq!(found.len(), 1, "the owner explains the failing call: {found:?}");
        assert_eq!((found[0].id, found[0].severity), ("signed.function_owner", Severity::Unsafe));
        assert_eq!(found[0].fix, "ALTER FUNCTION pgtenant.current_tenant() OWNER TO pgtenant_keyholder;");
        let mut c = catalog();
        function(&mut c).owner_superuser = true;
        assert_eq!(ids(&c), [("signed.function_owner", Severity::Warning)]);
        let mut c = catalog();
        function(&mut c).volatility = 'v';
        assert_eq!(ids(&c), [("signed.function_volatility", Severity::Warning)]);
        function(&mut c).volatility = 'i';
        assert_eq!(ids(&c), [("signed.function_volatility", Severity::Unsafe)]);
        let mut c = catalog();
        function(&mut c).executable = false;
        assert_eq!(ids(&c), [("signed.function_denied", Severity::Warning)]);
    }

    #[test]
    fn what_the_function_returns_for_a_forged_proof() {
        let mut c = catalog();
        function(&mut c).behaviour = Behaviour::Trusts;
        assert_eq!(ids(&c), [("signed.function_trusts_setting", Severity::Unsafe)]);
        function(&mut c).behaviour = Behaviour::Fails("function pgtenant.hmac does not exist".into());
        assert_eq!(ids(&c), [("signed.function_fails", Severity::Warning)]);
        function(&mut c).behaviour = Behaviour::Untested;
        assert_eq!(ids(&c), [("signed.function_untested", Severity::Info)]);
    }

    #[test]
    fn keys_loaded_or_not() {
        let mut c = catalog();
        setup(&mut c).key_table.as_mut().unwrap().rows = Some(0);
        let found = check(&c, &scope(), false);
        assert_eq!((found[0].id, found[0].severity), ("signed.no_keys", Severity::Warning));
        assert!(found[0].fix.contains("add_signing_key"), "{}", found[0].fix);
        setup(&mut c).key_table.as_mut().unwrap().rows = None;
        assert_eq!(ids(&c), [("signed.keys_unreadable", Severity::Info)]);
    }

    #[test]
    fn policies_must_call_the_function_in_a_subquery() {
        let mut c = catalog();
        c.tables[0].policies.push(policy("legacy", 'r', PLAIN));
        let found = check(&c, &scope(), false);
        assert_eq!(
            found.iter().map(|f| (f.id, f.severity)).collect::<Vec<_>>(),
            [("signed.policy_reads_setting", Severity::Unsafe)]
        );
        assert!(found[0].fix.starts_with("DROP POLICY legacy ON public.t;"), "{}", found[0].fix);
        assert!(!enforced(&c, &found));
        c.tables[0].policies[1].permissive = false;
        assert_eq!(ids(&c), [], "a restrictive policy only narrows");
        let mut c = catalog();
        c.tables[0].policies[0].using = Some(PLAIN.into());
        c.tables[0].policies[0].calls_signed = false;
        let found = check(&c, &scope(), false);
        assert!(
            found[0].fix.contains("USING (tenant_id = (SELECT pgtenant.current_tenant())::uuid)"),
            "{}",
            found[0].fix
        );
        let mut c = catalog();
        c.tables[0].policies[0].using = Some("(tenant_id = (pgtenant.current_tenant())::uuid)".into());
        assert_eq!(ids(&c), [("signed.policy_unwrapped", Severity::Warning)]);
    }

    #[test]
    fn unwrapped_calls_are_told_from_subqueries() {
        assert!(!unwrapped_call(SIGNED));
        assert!(!unwrapped_call("(tenant_id = (( SELECT current_tenant() AS current_tenant))::uuid)"));
        assert!(unwrapped_call("(tenant_id = (pgtenant.current_tenant())::uuid)"));
        assert!(unwrapped_call(
            "((( SELECT pgtenant.current_tenant() AS current_tenant) IS NOT NULL) AND (x = pgtenant.current_tenant()))"
        ));
    }

    #[test]
    fn the_proof_stays_out_of_the_log() {
        let mut c = catalog();
        setup(&mut c).log_parameters[1].1 = "-1".into();
        let found = check(&c, &scope(), false);
        assert_eq!((found[0].id, found[0].severity), ("signed.log_parameters", Severity::Warning));
        assert_eq!(found[0].fix, "ALTER ROLE app_user SET log_parameter_max_length_on_error = 0;");
        let mut c = catalog();
        c.server_version_num = 120_020;
        setup(&mut c).log_parameters.clear();
        assert_eq!(ids(&c), [("signed.log_parameters", Severity::Warning)]);
    }
}
