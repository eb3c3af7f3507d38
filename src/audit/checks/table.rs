//! Checks of every table, partition and inheritance child with the tenant column: RLS enabled
//! and forced, a policy for every command, no permissive policy that ignores the tenant, the
//! tenant column leading an index and included in unique indexes and foreign keys, and no
//! grant that works around RLS. Tables without the column are listed when the role can use them.

use crate::audit::catalog::{Catalog, Policy, Scope, TenantTable};
use crate::audit::literal;
use crate::audit::policy::{index_sql, policy_sql, TenantSource, COMMANDS, POLICY_PREFIX};
use crate::audit::report::{Finding, Severity};

use super::public_and;

/// All table checks; grant checks are skipped for a superuser role (it has every privilege).
pub fn check(catalog: &Catalog, scope: &Scope, superuser: bool) -> Vec<Finding> {
    let role = catalog.role.as_ref().map_or(scope.role.as_str(), |r| r.ident.as_str());
    let mut findings = Vec::new();
    for table in &catalog.tables {
        findings.extend(rls(table));
        findings.extend(missing_policies(catalog, scope, table, role));
        findings.extend(table.policies.iter().filter_map(|p| policy(table, p, &scope.setting)));
        findings.extend(setting_forms(table, &scope.setting));
        findings.extend(indexes(catalog, scope, table));
        findings.extend(foreign_keys(table, &scope.column));
        if !superuser && !table.role_owns {
            findings.extend(grants(table, role));
        }
    }
    for (name, usable) in &catalog.other_tables {
        if *usable && !superuser {
            let why =
                format!("no {} column: every tenant sees all of its rows (fine for shared data only)", scope.column);
            findings.push(Finding::new("table.no_tenant_column", Severity::Info, format!("table {name}"), why));
        }
    }
    findings
}

fn rls(table: &TenantTable) -> Vec<Finding> {
    let t = &table.name;
    if !table.rls_enabled {
        let why = "row-level security is disabled: every tenant sees every row";
        let fix = format!("ALTER TABLE {t} ENABLE ROW LEVEL SECURITY;\nALTER TABLE {t} FORCE ROW LEVEL SECURITY;");
        return vec![Finding::new("table.rls_disabled", Severity::Unsafe, table.label(), why).fix(fix)];
    }
    if !table.rls_forced {
        let why = "row-level security is not forced: the owner (and roles that are members of it) bypass it";
        let fix = format!("ALTER TABLE {t} FORCE ROW LEVEL SECURITY;");
        return vec![Finding::new("table.rls_not_forced", Severity::Warning, table.label(), why).fix(fix)];
    }
    Vec::new()
}

/// Commands the role may run on the table with no permissive policy covering them.
fn missing_policies(catalog: &Catalog, scope: &Scope, table: &TenantTable, role: &str) -> Option<Finding> {
    let g = table.grants;
    let granted = [g.select, g.insert, g.update, g.delete];
    let missing: Vec<&str> = COMMANDS
        .iter()
        .zip(granted)
        .filter(|((letter, _), granted)| {
            *granted
                && !table
                    .policies
                    .iter()
                    .any(|p| p.permissive && p.applies && matches!(p.command, c if c == *letter || c == '*'))
        })
        .map(|((_, command), _)| *command)
        .collect();
    if missing.is_empty() {
        return None;
    }
    let why = format!(
        "no policy for {} applies to {}: those statements match no rows (RLS denies by default)",
        missing.join(", "),
        scope.role
    );
    let source = TenantSource::of(catalog, &scope.setting);
    let fix: String = missing.iter().map(|c| policy_sql(table, role, &catalog.column_ident, source, c)).collect();
    Some(Finding::new("table.policy_missing", Severity::Warning, table.label(), why).fix(fix.trim_end().to_string()))
}

/// A permissive policy the role can reach that lets rows through regardless of the tenant.
fn policy(table: &TenantTable, p: &Policy, setting: &str) -> Option<Finding> {
    if !p.permissive || !p.reachable {
        return None;
    }
    let exprs = expressions(p);
    let drop = format!("DROP POLICY {} ON {};", p.name, table.name);
    let recreate = "-- then re-create it from `pgtenant policy`";
    if let Some((clause, _)) = exprs.iter().find(|(_, e)| e.trim() == "true") {
        let why = format!("policy {} is {clause} (true): every tenant sees (or writes) every row", p.name);
        return Some(Finding::new("policy.using_true", Severity::Unsafe, table.label(), why).fix(drop));
    }
    let needle = format!("current_setting({}", literal(setting));
    // A signed policy takes the tenant from pgtenant.current_tenant() (checks::signed looks at how).
    let reads_tenant =
        |e: &str| e.to_ascii_lowercase().contains(&needle) || (p.calls_signed && e.contains("current_tenant()"));
    if let Some((clause, _)) = exprs.iter().find(|(_, e)| !reads_tenant(e)) {
        let why = format!(
            "policy {}'s {clause} does not read {setting}: as a permissive policy it lets rows through for every tenant",
            p.name
        );
        return Some(
            Finding::new("policy.no_setting", Severity::Unsafe, table.label(), why).fix(format!("{drop}\n{recreate}")),
        );
    }
    None
}

/// Why a policy's reading of the setting is not the recommended form, if it is not.
fn setting_form(p: &Policy, exprs: &[(&str, &str)], setting: &str) -> Option<&'static str> {
    let lit = literal(setting);
    let reads = |e: &str| e.to_ascii_lowercase().contains(&format!("current_setting({lit}"));
    // Policies that do not read the setting at all are `policy.no_setting` or `policy.using_true`.
    if p.name.starts_with(POLICY_PREFIX) || !exprs.iter().all(|(_, e)| reads(e)) {
        return None;
    }
    let safe_read = format!("NULLIF(current_setting({lit}::text, true), ''::text)");
    if exprs.iter().any(|(_, e)| !e.contains(&safe_read)) {
        return Some(
            "without NULLIF(..., '') and missing_ok, so an unset tenant raises an error instead of matching no rows",
        );
    }
    let wrapped = |e: &str| e.find(&format!("current_setting({lit}")).is_some_and(|at| e[..at].contains("SELECT "));
    if exprs.iter().any(|(_, e)| !wrapped(e)) {
        return Some("outside a (SELECT ...) subquery, so it is evaluated for every row instead of once per query");
    }
    None
}

/// One info finding per table for its policies that read the setting in another form.
fn setting_forms(table: &TenantTable, setting: &str) -> Option<Finding> {
    let mut reasons: Vec<(&'static str, Vec<&str>)> = Vec::new();
    for p in table.policies.iter().filter(|p| p.permissive && p.reachable) {
        let exprs: Vec<(&str, &str)> = expressions(p);
        if let Some(reason) = setting_form(p, &exprs, setting) {
            match reasons.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, names)) => names.push(&p.name),
                None => reasons.push((reason, vec![&p.name])),
            }
        }
    }
    if reasons.is_empty() {
        return None;
    }
    let parts: Vec<String> =
        reasons.iter().map(|(reason, names)| format!("{} read {setting} {reason}", names.join(", "))).collect();
    let why = format!("policies {}", parts.join("; "));
    let fix = "-- drop them where the pgtenant_* policies of `pgtenant policy` cover the same commands, else re-create them in that form";
    Some(Finding::new("policy.setting_form", Severity::Info, table.label(), why).fix(fix))
}

/// A policy's expressions: (clause, text).
fn expressions(p: &Policy) -> Vec<(&'static str, &str)> {
    [("USING", p.using.as_deref()), ("WITH CHECK", p.check.as_deref())]
        .into_iter()
        .filter_map(|(k, e)| Some((k, e?)))
        .collect()
}

fn indexes(catalog: &Catalog, scope: &Scope, table: &TenantTable) -> Vec<Finding> {
    let mut findings = Vec::new();
    if !table.indexes.iter().any(|i| i.leads_with_tenant && !i.partial) {
        let why = format!("no index is led by {}: every query scans the whole table, all tenants' rows", scope.column);
        let fix = index_sql(table, &scope.column, &catalog.column_ident).trim_end().to_string();
        findings.push(Finding::new("table.index_missing", Severity::Warning, table.label(), why).fix(fix));
    }
    for index in table.indexes.iter().filter(|i| i.unique && !i.has_tenant) {
        // Generated keys (identity, serial, random uuid) only collide when a client supplies one.
        let severity = if index.generated_keys { Severity::Info } else { Severity::Warning };
        let why = format!(
            "unique index {} does not include {}: a duplicate-key error tells a tenant that another tenant has that value",
            index.name, scope.column
        );
        let fix =
            format!("-- re-create {} with {} as its first column, then drop the old one", index.name, scope.column);
        findings.push(Finding::new("table.unique_without_tenant", severity, table.label(), why).fix(fix));
    }
    findings
}

fn foreign_keys(table: &TenantTable, column: &str) -> Vec<Finding> {
    table
        .foreign_keys
        .iter()
        .filter(|fk| fk.references_tenant_table && !fk.includes_tenant)
        .map(|fk| {
            let why = format!(
                "foreign key {} to {} does not match {column}: a row can point at another tenant's row, and the key check (which ignores RLS) reveals that it exists",
                fk.name, fk.references
            );
            let fix = format!(
                "-- replace {} ({}) with one that includes {column} on both sides, e.g. FOREIGN KEY ({column}, ...) REFERENCES {} ({column}, ...)",
                fk.name, fk.definition, fk.references
            );
            Finding::new("table.fk_without_tenant", Severity::Warning, table.label(), why).fix(fix)
        })
        .collect()
}

fn grants(table: &TenantTable, role: &str) -> Vec<Finding> {
    let revoke = |privilege: &str| format!("REVOKE {privilege} ON {} FROM {};", table.name, public_and(role));
    let mut findings = Vec::new();
    if table.grants.truncate {
        let why = "the role may TRUNCATE it: TRUNCATE ignores row-level security and empties every tenant's rows";
        findings.push(Finding::new("table.truncate", Severity::Unsafe, table.label(), why).fix(revoke("TRUNCATE")));
    }
    if table.grants.references {
        let why =
            "the role has REFERENCES on it: a foreign key to it probes other tenants' keys (key checks ignore RLS)";
        findings
            .push(Finding::new("table.references", Severity::Warning, table.label(), why).fix(revoke("REFERENCES")));
    }
    if table.grants.trigger {
        let why = "the role has TRIGGER on it: a trigger would run on every tenant's writes and see their rows";
        findings.push(Finding::new("table.trigger", Severity::Warning, table.label(), why).fix(revoke("TRIGGER")));
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::catalog::{ForeignKey, Index, RoleInfo, SignedFunction, SignedSetup, TableGrants};

    const GOOD: &str = "(tenant_id = ( SELECT (NULLIF(current_setting('app.current_tenant_id'::text, true), ''::text))::uuid AS \"nullif\"))";

    fn scope() -> Scope {
        Scope { role: "app_user".into(), column: "tenant_id".into(), setting: "app.current_tenant_id".into() }
    }

    fn policy(name: &str, command: char, using: Option<&str>, check: Option<&str>) -> Policy {
        Policy {
            name: name.into(),
            command,
            permissive: true,
            applies: true,
            reachable: true,
            using: using.map(String::from),
            check: check.map(String::from),
            calls_signed: using.or(check).is_some_and(|e| e.contains("pgtenant.current_tenant()")),
        }
    }

    /// A table that passes every check.
    fn good_table() -> TenantTable {
        TenantTable {
            name: "public.t".into(),
            relname: "t".into(),
            column_type: "uuid".into(),
            rls_enabled: true,
            rls_forced: true,
            grants: TableGrants { select: true, insert: true, update: true, delete: true, ..TableGrants::default() },
            policies: vec![
                policy("pgtenant_select", 'r', Some(GOOD), None),
                policy("pgtenant_insert", 'a', None, Some(GOOD)),
                policy("pgtenant_update", 'w', Some(GOOD), Some(GOOD)),
                policy("pgtenant_delete", 'd', Some(GOOD), None),
            ],
            indexes: vec![Index {
                name: "t_idx".into(),
                leads_with_tenant: true,
                has_tenant: true,
                ..Index::default()
            }],
            ..TenantTable::default()
        }
    }

    fn ids_for(table: TenantTable) -> Vec<(&'static str, Severity)> {
        let catalog = Catalog {
            column_ident: "tenant_id".into(),
            role: Some(RoleInfo { ident: "app_user".into(), ..RoleInfo::default() }),
            tables: vec![table],
            ..Catalog::default()
        };
        check(&catalog, &scope(), false).iter().map(|f| (f.id, f.severity)).collect()
    }

    #[test]
    fn a_good_table_is_clean() {
        assert_eq!(ids_for(good_table()), []);
    }

    #[test]
    fn rls_switches() {
        let mut t = good_table();
        t.rls_forced = false;
        assert_eq!(ids_for(t.clone()), [("table.rls_not_forced", Severity::Warning)]);
        t.rls_enabled = false;
        assert_eq!(ids_for(t), [("table.rls_disabled", Severity::Unsafe)]);
    }

    #[test]
    fn missing_commands_and_all_policies() {
        let mut t = good_table();
        t.policies.retain(|p| p.command != 'd');
        assert_eq!(ids_for(t.clone()), [("table.policy_missing", Severity::Warning)]);
        t.policies.push(policy("all", '*', Some(GOOD), None));
        assert_eq!(ids_for(t.clone()), []);
        t.grants.delete = false;
        t.policies.pop();
        assert_eq!(ids_for(t), [], "no DELETE privilege, no DELETE policy needed");
    }

    #[test]
    fn leaky_policies() {
        let mut t = good_table();
        t.policies.push(policy("open", 'r', Some("true"), None));
        assert_eq!(ids_for(t.clone()), [("policy.using_true", Severity::Unsafe)]);
        t.policies.pop();
        t.policies.push(policy("mine", 'r', Some("(owner = CURRENT_USER)"), None));
        assert_eq!(ids_for(t.clone()), [("policy.no_setting", Severity::Unsafe)]);
        t.policies.last_mut().unwrap().permissive = false;
        assert_eq!(ids_for(t), [], "a restrictive policy only narrows");
    }

    #[test]
    fn signed_policies_read_the_tenant() {
        let signed = "(tenant_id = (( SELECT pgtenant.current_tenant() AS current_tenant))::uuid)";
        let mut t = good_table();
        for p in &mut t.policies {
            p.using = p.using.as_ref().map(|_| signed.to_string());
            p.check = p.check.as_ref().map(|_| signed.to_string());
            p.calls_signed = true;
        }
        assert_eq!(ids_for(t.clone()), []);
        // The text alone is not enough: the policy must depend on the function itself.
        t.policies[0].calls_signed = false;
        assert_eq!(ids_for(t), [("policy.no_setting", Severity::Unsafe)]);
    }

    #[test]
    fn missing_policies_are_fixed_in_the_signed_form_when_the_database_has_it() {
        let mut t = good_table();
        t.policies.retain(|p| p.command != 'd');
        let catalog = Catalog {
            column_ident: "tenant_id".into(),
            role: Some(RoleInfo { ident: "app_user".into(), ..RoleInfo::default() }),
            tables: vec![t],
            signed: Some(SignedSetup { function: Some(SignedFunction::default()), ..SignedSetup::default() }),
            ..Catalog::default()
        };
        let found = check(&catalog, &scope(), false);
        assert_eq!(found[0].id, "table.policy_missing");
        assert!(
            found[0].fix.ends_with("USING (tenant_id = (SELECT pgtenant.current_tenant())::uuid);"),
            "{}",
            found[0].fix
        );
    }

    #[test]
    fn the_setting_form_is_informational() {
        let mut t = good_table();
        let bare = "(tenant_id = (current_setting('app.current_tenant_id'::text, true))::uuid)";
        t.policies.push(policy("legacy", 'r', Some(bare), None));
        assert_eq!(ids_for(t), [("policy.setting_form", Severity::Info)]);
    }

    #[test]
    fn indexes_and_keys() {
        let mut t = good_table();
        t.indexes[0].leads_with_tenant = false;
        assert_eq!(ids_for(t.clone()), [("table.index_missing", Severity::Warning)]);
        let mut t = good_table();
        t.indexes.push(Index { name: "u".into(), unique: true, ..Index::default() });
        assert_eq!(ids_for(t.clone()), [("table.unique_without_tenant", Severity::Warning)]);
        t.indexes[1].generated_keys = true;
        assert_eq!(ids_for(t), [("table.unique_without_tenant", Severity::Info)]);
        let mut t = good_table();
        let fk = ForeignKey { name: "fk".into(), references_tenant_table: true, ..ForeignKey::default() };
        t.foreign_keys.push(fk);
        assert_eq!(ids_for(t.clone()), [("table.fk_without_tenant", Severity::Warning)]);
        t.foreign_keys[0].includes_tenant = true;
        assert_eq!(ids_for(t), []);
    }

    #[test]
    fn grants_around_rls() {
        let mut t = good_table();
        t.grants.truncate = true;
        t.grants.references = true;
        t.grants.trigger = true;
        assert_eq!(
            ids_for(t.clone()),
            [
                ("table.truncate", Severity::Unsafe),
                ("table.references", Severity::Warning),
                ("table.trigger", Severity::Warning)
            ]
        );
        t.role_owns = true;
        assert_eq!(ids_for(t), [], "ownership is reported once, by the role check");
    }
}
