//! Checks of the pooled role: attributes that bypass RLS or let it gain privileges, ownership
//! of tenant tables, and memberships in predefined roles that read around RLS.

use std::collections::BTreeMap;

use crate::audit::catalog::{Catalog, RoleInfo, Scope};
use crate::audit::policy::SET_CONFIG;
use crate::audit::report::{Finding, Severity};

/// Predefined roles that read or run anything on the server's file system.
const SERVER_FILE_ROLES: [&str; 3] = ["pg_read_server_files", "pg_write_server_files", "pg_execute_server_program"];

/// Predefined roles that read or write every table (RLS still applies, but not to tables without it).
const ALL_DATA_ROLES: [&str; 2] = ["pg_read_all_data", "pg_write_all_data"];

/// All role checks.
pub fn check(catalog: &Catalog, scope: &Scope) -> Vec<Finding> {
    let Some(role) = &catalog.role else { return Vec::new() };
    let object = format!("role {}", scope.role);
    let mut findings = attributes(catalog, role, &object);
    if role.superuser {
        // A superuser is a member of every role: ownership and memberships would only repeat it.
        return findings;
    }
    findings.extend(ownership(catalog, role, &object));
    findings.extend(memberships(role, &object));
    if !catalog.privileges.set_config {
        findings.push(
            Finding::new(
                "role.set_config_denied",
                Severity::Warning,
                &object,
                "it cannot EXECUTE set_config, which pgtenant uses to set the tenant in extended-protocol transactions",
            )
            .fix(format!("GRANT EXECUTE ON FUNCTION {SET_CONFIG} TO {};", role.ident)),
        );
    }
    findings
}

fn attributes(catalog: &Catalog, role: &RoleInfo, object: &str) -> Vec<Finding> {
    let r = &role.ident;
    let mut findings = Vec::new();
    if role.superuser {
        let why = "it is a superuser: row-level security never applies to it, every tenant sees every row";
        findings.push(
            Finding::new("role.superuser", Severity::Unsafe, object, why).fix(format!("ALTER ROLE {r} NOSUPERUSER;")),
        );
    }
    if role.bypassrls {
        let why = "it has BYPASSRLS: row-level security never applies to it, every tenant sees every row";
        findings.push(
            Finding::new("role.bypassrls", Severity::Unsafe, object, why).fix(format!("ALTER ROLE {r} NOBYPASSRLS;")),
        );
    }
    if role.createrole {
        // Before PostgreSQL 16, CREATEROLE may grant itself membership in any non-superuser role,
        // the tables' owners included; from 16 on only in roles it administers.
        let (severity, why) = if catalog.major() < 16 {
            (
                Severity::Unsafe,
                "it has CREATEROLE: before PostgreSQL 16 it can join any role, including the tables' owners",
            )
        } else {
            (Severity::Warning, "it has CREATEROLE: it can create roles and grant the roles it administers")
        };
        findings
            .push(Finding::new("role.createrole", severity, object, why).fix(format!("ALTER ROLE {r} NOCREATEROLE;")));
    }
    if role.createdb {
        let why =
            "it has CREATEDB: tenants can create databases (no tenant data, but resources and a way out of policies)";
        findings.push(
            Finding::new("role.createdb", Severity::Warning, object, why).fix(format!("ALTER ROLE {r} NOCREATEDB;")),
        );
    }
    findings
}

/// One finding per owner of tenant tables that the role is, or is a member of.
fn ownership(catalog: &Catalog, role: &RoleInfo, object: &str) -> Vec<Finding> {
    let mut by_owner: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for table in catalog.tables.iter().filter(|t| t.role_owns) {
        by_owner.entry(table.owner.as_str()).or_default().push(table.name.as_str());
    }
    by_owner
        .into_iter()
        .map(|(owner, tables)| {
            let list = tables.join(", ");
            let (why, fix) = if owner == role.ident {
                // The user doctor runs as is a natural new owner, unless it is the role itself.
                let fix: Vec<String> = if catalog.current_user != role.ident && !catalog.current_user.is_empty() {
                    tables.iter().map(|t| format!("ALTER TABLE {t} OWNER TO {};", catalog.current_user)).collect()
                } else {
                    let other = format!("<a role {} is not a member of>", role.ident);
                    tables.iter().map(|t| format!("-- ALTER TABLE {t} OWNER TO {other};")).collect()
                };
                (format!("it owns tenant tables ({list}): an owner can disable RLS and drop policies"), fix.join("\n"))
            } else {
                let why = format!(
                    "it is a member of {owner}, which owns tenant tables ({list}): an owner can disable RLS and drop policies"
                );
                (why, format!("REVOKE {owner} FROM {};", role.ident))
            };
            Finding::new("role.owner", Severity::Unsafe, object, why).fix(fix)
        })
        .collect()
}

fn memberships(role: &RoleInfo, object: &str) -> Vec<Finding> {
    let r = &role.ident;
    let member = |names: &[&str]| -> Vec<String> {
        role.member_of.iter().filter(|m| names.contains(&m.as_str())).cloned().collect()
    };
    let revoke =
        |roles: &[String]| roles.iter().map(|m| format!("REVOKE {m} FROM {r};")).collect::<Vec<_>>().join("\n");
    let mut findings = Vec::new();
    let files = member(&SERVER_FILE_ROLES);
    if !files.is_empty() {
        let why =
            format!("it is a member of {}: it can read the data files or run programs as the server", files.join(", "));
        findings.push(Finding::new("role.server_files", Severity::Unsafe, object, why).fix(revoke(&files)));
    }
    let stats = member(&["pg_read_all_stats"]);
    if !stats.is_empty() {
        let why = "it is a member of pg_read_all_stats (or pg_monitor): it sees every session's query text, other tenants' included";
        findings.push(Finding::new("role.read_all_stats", Severity::Warning, object, why).fix(revoke(&stats)));
    }
    let all_data = member(&ALL_DATA_ROLES);
    if !all_data.is_empty() {
        let why = format!("it is a member of {}: it reads or writes every table without RLS", all_data.join(", "));
        findings.push(Finding::new("role.all_data", Severity::Warning, object, why).fix(revoke(&all_data)));
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::catalog::{Privileges, TenantTable};

    fn scope() -> Scope {
        Scope { role: "app_user".into(), column: "tenant_id".into(), setting: "app.current_tenant_id".into() }
    }

    fn catalog(role: RoleInfo) -> Catalog {
        Catalog {
            server_version_num: 150018,
            current_user: "postgres".into(),
            role: Some(RoleInfo { ident: "app_user".into(), ..role }),
            privileges: Privileges { set_config: true, ..Privileges::default() },
            ..Catalog::default()
        }
    }

    fn ids(findings: &[Finding]) -> Vec<(&'static str, Severity)> {
        findings.iter().map(|f| (f.id, f.severity)).collect()
    }

    #[test]
    fn a_plain_role_is_clean() {
        assert!(check(&catalog(RoleInfo::default()), &scope()).is_empty());
    }

    #[test]
    fn attributes_are_flagged() {
        let role =
            RoleInfo { superuser: true, bypassrls: true, createrole: true, createdb: true, ..RoleInfo::default() };
        let found = check(&catalog(role.clone()), &scope());
        assert_eq!(
            ids(&found),
            [
                ("role.superuser", Severity::Unsafe),
                ("role.bypassrls", Severity::Unsafe),
                ("role.createrole", Severity::Unsafe),
                ("role.createdb", Severity::Warning)
            ]
        );
        let mut pg16 = catalog(role);
        pg16.server_version_num = 160004;
        assert_eq!(check(&pg16, &scope())[2].severity, Severity::Warning);
    }

    #[test]
    fn ownership_direct_and_through_membership() {
        let mut c = catalog(RoleInfo::default());
        let owned = |name: &str, owner: &str| TenantTable {
            name: name.into(),
            owner: owner.into(),
            role_owns: true,
            ..TenantTable::default()
        };
        c.tables = vec![owned("public.a", "app_user"), owned("public.b", "owners"), owned("public.c", "owners")];
        let found = check(&c, &scope());
        assert_eq!(ids(&found), [("role.owner", Severity::Unsafe), ("role.owner", Severity::Unsafe)]);
        assert_eq!(found[0].fix, "ALTER TABLE public.a OWNER TO postgres;");
        assert!(found[1].why.contains("public.b, public.c"), "{}", found[1].why);
        assert_eq!(found[1].fix, "REVOKE owners FROM app_user;");
    }

    #[test]
    fn memberships_are_flagged() {
        let member_of = ["pg_monitor", "pg_read_all_stats", "pg_read_server_files"].map(String::from).to_vec();
        let found = check(&catalog(RoleInfo { member_of, ..RoleInfo::default() }), &scope());
        assert_eq!(ids(&found), [("role.server_files", Severity::Unsafe), ("role.read_all_stats", Severity::Warning)]);
    }

    #[test]
    fn set_config_is_needed() {
        let mut c = catalog(RoleInfo::default());
        c.privileges.set_config = false;
        assert_eq!(ids(&check(&c, &scope())), [("role.set_config_denied", Severity::Warning)]);
    }
}
