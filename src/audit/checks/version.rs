//! The server version against the PostgreSQL security fixes that concern row-level security.
//!
//! The table is maintained by hand from the PostgreSQL security page
//! (<https://www.postgresql.org/support/security/>); last reviewed November 2026. A fix is
//! identified by the first minor release of each major version that has it.

use crate::audit::catalog::Catalog;
use crate::audit::report::{Finding, Severity};

use super::short_version;

/// A security fix that matters for tenant isolation.
pub struct Fix {
    /// The CVE id.
    pub cve: &'static str,
    /// What it fixed, in a few words.
    pub title: &'static str,
    /// The first affected release, as `server_version_num` (90500 for 9.5.0).
    pub since: i32,
    /// The first fixed release of each major version that got the fix, as `server_version_num`.
    pub fixed_in: &'static [i32],
}

/// RLS-related fixes, oldest first.
pub const FIXES: &[Fix] = &[
    Fix {
        cve: "CVE-2016-2193",
        title: "a plan cached for one role reused row security policies after SET ROLE",
        since: 90500,
        fixed_in: &[90502],
    },
    Fix {
        cve: "CVE-2019-10130",
        title: "selectivity estimators bypassed row security policies (statistics leak)",
        since: 90500,
        fixed_in: &[90517, 90613, 100008, 110003],
    },
    Fix {
        cve: "CVE-2023-2455",
        title: "row security policies disregarded user ID changes after inlining",
        since: 90500,
        fixed_in: &[110020, 120015, 130011, 140008, 150003],
    },
    Fix {
        cve: "CVE-2023-39418",
        title: "MERGE did not enforce UPDATE or SELECT row security policies",
        since: 150000,
        fixed_in: &[150004],
    },
    Fix {
        cve: "CVE-2024-4317",
        title: "pg_stats_ext and pg_stats_ext_exprs showed other tables' most common values (needs a per-database fix after upgrading)",
        since: 140000,
        fixed_in: &[140012, 150007, 160003],
    },
    Fix {
        cve: "CVE-2024-10976",
        title: "row security below subqueries disregarded user ID changes",
        since: 90500,
        fixed_in: &[120021, 130017, 140014, 150009, 160005, 170001],
    },
    Fix {
        cve: "CVE-2025-8713",
        title: "optimizer statistics exposed sampled rows of views, partitions and child tables past RLS",
        since: 90500,
        fixed_in: &[130022, 140019, 150014, 160010, 170006],
    },
];

/// The oldest major version still supported by the PostgreSQL project (as of the review date).
pub const OLDEST_SUPPORTED_MAJOR: i32 = 15;

/// Whether a server at `version` (a `server_version_num`) lacks `fix`.
pub fn lacks(fix: &Fix, version: i32) -> bool {
    if version < fix.since {
        return false;
    }
    let major = series(version);
    match fix.fixed_in.iter().find(|&&v| series(v) == major) {
        Some(&first_fixed) => version < first_fixed,
        // A major without its own fixed release: affected if older than every fixed major
        // (it was out of support by then), not affected if newer (released with the fix).
        None => fix.fixed_in.iter().all(|&v| series(v) > major),
    }
}

/// A major version on one scale for 9.x and later: 905 for 9.5, 1500 for 15.
fn series(version: i32) -> i32 {
    if version >= 100_000 {
        version / 10_000 * 100
    } else {
        version / 100
    }
}

/// `server.version` when fixes are missing, `server.unsupported` for an end-of-life major.
pub fn check(catalog: &Catalog) -> Vec<Finding> {
    let version = catalog.server_version_num;
    if version == 0 {
        return Vec::new();
    }
    let object = format!("server PostgreSQL {}", short_version(&catalog.server_version));
    let mut findings = Vec::new();
    let missing: Vec<&Fix> = FIXES.iter().filter(|f| lacks(f, version)).collect();
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|f| format!("{} ({})", f.cve, f.title)).collect();
        let why = format!("the server lacks RLS security fixes: {}", list.join("; "));
        let target = missing.iter().filter_map(|f| f.fixed_in.iter().find(|&&v| series(v) == series(version))).max();
        let fix = match target {
            Some(&v) => {
                format!("-- upgrade to PostgreSQL {} or later (a minor release: new binaries, restart)", display(v))
            }
            None => "-- upgrade to a supported major version".to_string(),
        };
        findings.push(Finding::new("server.version", Severity::Warning, &object, why).fix(fix));
    }
    if catalog.major() < OLDEST_SUPPORTED_MAJOR {
        let why = "this major version no longer gets security fixes from the PostgreSQL project";
        let fix = format!("-- upgrade to PostgreSQL {OLDEST_SUPPORTED_MAJOR} or later");
        findings.push(Finding::new("server.unsupported", Severity::Warning, &object, why).fix(fix));
    }
    findings
}

/// `150014` → `15.14`, `90613` → `9.6.13`.
fn display(version: i32) -> String {
    if version >= 100_000 {
        format!("{}.{}", version / 10_000, version % 10_000)
    } else {
        format!("{}.{}.{}", version / 10_000, version / 100 % 100, version % 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix(cve: &str) -> &'static Fix {
        FIXES.iter().find(|f| f.cve == cve).unwrap()
    }

    #[test]
    fn fixed_minor_releases() {
        let f = fix("CVE-2024-10976");
        assert!(lacks(f, 150008));
        assert!(!lacks(f, 150009));
        assert!(!lacks(f, 180000), "released after the fix");
        assert!(lacks(f, 110022), "11 was out of support, never fixed");
        assert!(!lacks(fix("CVE-2023-39418"), 140020), "MERGE came with 15");
        assert!(lacks(fix("CVE-2023-39418"), 150003));
    }

    #[test]
    fn the_report_names_cves_and_the_target_release() {
        let catalog = Catalog { server_version: "15.8".into(), server_version_num: 150008, ..Catalog::default() };
        let found = check(&catalog);
        assert_eq!(found.len(), 1);
        assert!(found[0].why.contains("CVE-2024-10976") && found[0].why.contains("CVE-2025-8713"), "{}", found[0].why);
        assert!(!found[0].why.contains("CVE-2023-2455"));
        assert_eq!(found[0].fix, "-- upgrade to PostgreSQL 15.14 or later (a minor release: new binaries, restart)");
        let current = Catalog { server_version: "17.6".into(), server_version_num: 170006, ..Catalog::default() };
        assert!(check(&current).is_empty());
        let old = Catalog { server_version: "13.22".into(), server_version_num: 130022, ..Catalog::default() };
        assert_eq!(check(&old).iter().map(|f| f.id).collect::<Vec<_>>(), ["server.unsupported"]);
    }

    #[test]
    fn versions_display() {
        assert_eq!(display(150014), "15.14");
        assert_eq!(display(90613), "9.6.13");
    }
}
