//! The checks of `pgtenant doctor`, pure functions over a [`Catalog`]:
//!
//! - [`role`]: the pooled role's attributes, memberships and ownerships;
//! - [`table`]: every tenant table, partition and child: RLS, policies, indexes, keys, grants;
//! - [`bypass`]: the ways around the proxy (code it never sees, settings, views, functions);
//! - [`version`]: the server version against the RLS security fixes;
//! - [`signed`]: the signed tenant context (`pgtenant policy --signed`), when it is there or expected.
//!
//! Check ids are stable (scripts match on them); the list is in README.md.

pub mod bypass;
pub mod role;
pub mod signed;
pub mod table;
pub mod version;

use super::catalog::{Catalog, Scope};
use super::report::Report;

/// Runs every check and returns the report, with one object per role, table and view. With
/// `expect_signed` (`doctor --signed`), a missing signed tenant context is unsafe.
pub fn run(catalog: &Catalog, scope: &Scope, expect_signed: bool) -> Report {
    let mut report = Report { kind: "doctor", ..Report::default() };
    report.context = vec![
        ("database".into(), catalog.database.clone()),
        ("server".into(), short_version(&catalog.server_version)),
        ("role".into(), scope.role.clone()),
        ("column".into(), scope.column.clone()),
        ("setting".into(), scope.setting.clone()),
    ];
    report.object(format!("server PostgreSQL {}", short_version(&catalog.server_version)));
    report.object(format!("role {}", scope.role));
    report.object(format!("database {}", catalog.database));
    for table in &catalog.tables {
        report.object(table.label());
    }
    if let Some(setup) = &catalog.signed {
        report.object(signed::SCHEMA_OBJECT);
        if setup.function.is_some() {
            report.object(signed::FUNCTION_OBJECT);
        }
        if setup.key_table.is_some() {
            report.object(signed::KEY_TABLE_OBJECT);
        }
    }
    let superuser = catalog.role.as_ref().is_some_and(|r| r.superuser);
    let signed_findings = signed::check(catalog, scope, expect_signed);
    let signed_enforced = signed::enforced(catalog, &signed_findings);
    report.findings.extend(version::check(catalog));
    report.findings.extend(role::check(catalog, scope));
    report.findings.extend(table::check(catalog, scope, superuser));
    if !superuser {
        // A superuser has every privilege: the findings below would only repeat that.
        report.findings.extend(bypass::check(catalog, scope, signed_enforced));
    }
    report.findings.extend(signed_findings);
    report
}

/// `15.18` out of `15.18 (Debian 15.18-0+deb12u1)`.
pub fn short_version(version: &str) -> String {
    version.split_whitespace().next().unwrap_or(version).to_string()
}

/// `PUBLIC, <role>`: whom a REVOKE names so that neither path keeps the privilege.
fn public_and(role: &str) -> String {
    format!("PUBLIC, {role}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_shortened() {
        assert_eq!(short_version("15.18 (Debian 15.18-0+deb12u1)"), "15.18");
        assert_eq!(short_version("17.2"), "17.2");
    }
}
