//! What `doctor` found and how it is shown: findings with a severity, checks that passed,
//! the human and JSON renderings, and the exit code (0 clean, 1 warnings, 2 unsafe).

use std::fmt::Write as _;

use serde::Serialize;

/// How bad a finding is. The order matters: the worst finding decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; does not change the exit code.
    Info,
    /// Weakens isolation or performance, or breaks something; exit code 1.
    Warning,
    /// A tenant can (or could) reach another tenant's rows; exit code 2.
    Unsafe,
}

impl Severity {
    /// Upper-case label for the human output.
    pub fn label(self) -> &'static str {
        match self {
            Severity::Info => "INFO",
            Severity::Warning => "WARNING",
            Severity::Unsafe => "UNSAFE",
        }
    }
}

/// One problem: which check, how bad, on what, why, and the SQL that fixes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable check id, e.g. `role.bypassrls`.
    pub id: &'static str,
    /// How bad it is.
    pub severity: Severity,
    /// The object, e.g. `role app_user`, `table public.tool_calls`.
    pub object: String,
    /// One line: why it matters.
    pub why: String,
    /// SQL (or an SQL comment) that fixes it; empty when there is nothing to run.
    pub fix: String,
}

impl Finding {
    /// A finding with the given id, severity, object, reason and fix.
    pub fn new(id: &'static str, severity: Severity, object: impl Into<String>, why: impl Into<String>) -> Finding {
        Finding { id, severity, object: object.into(), why: why.into(), fix: String::new() }
    }

    /// The same finding with `fix` as its fix.
    pub fn fix(mut self, fix: impl Into<String>) -> Finding {
        self.fix = fix.into();
        self
    }
}

/// A check that ran and passed (listed by the probe, and per object by doctor).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Passed {
    /// Stable check id.
    pub id: &'static str,
    /// The object it ran on.
    pub object: String,
    /// What was verified.
    pub what: String,
}

/// Everything one run produced, plus the context shown in the header.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// `doctor` or `probe`.
    pub kind: &'static str,
    /// Context lines for the header, e.g. ("database", "app").
    pub context: Vec<(String, String)>,
    /// Objects that were checked, in order: findings are grouped under them.
    pub objects: Vec<String>,
    /// The problems found.
    pub findings: Vec<Finding>,
    /// Checks that passed.
    pub passed: Vec<Passed>,
}

impl Report {
    /// The worst severity found, if any.
    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }

    /// 0 when nothing worse than info was found, 1 for warnings, 2 for anything unsafe.
    pub fn exit_code(&self) -> u8 {
        match self.worst() {
            None | Some(Severity::Info) => 0,
            Some(Severity::Warning) => 1,
            Some(Severity::Unsafe) => 2,
        }
    }

    /// How many findings have `severity`.
    pub fn count(&self, severity: Severity) -> usize {
        self.findings.iter().filter(|f| f.severity == severity).count()
    }

    /// Adds `object` to the checked objects unless it is there already.
    pub fn object(&mut self, object: impl Into<String>) {
        let object = object.into();
        if !self.objects.contains(&object) {
            self.objects.push(object);
        }
    }

    /// The JSON form (`--json`): context, summary, exit code, findings and passed checks.
    pub fn to_json(&self) -> serde_json::Value {
        let context: serde_json::Map<String, serde_json::Value> =
            self.context.iter().map(|(k, v)| (k.clone(), serde_json::Value::from(v.clone()))).collect();
        serde_json::json!({
            "kind": self.kind,
            "context": context,
            "summary": {
                "unsafe": self.count(Severity::Unsafe),
                "warning": self.count(Severity::Warning),
                "info": self.count(Severity::Info),
                "passed": self.passed.len(),
            },
            "exit_code": self.exit_code(),
            "objects": self.objects,
            "findings": self.findings,
            "passed": self.passed,
        })
    }

    /// The human form: a header, then each object with its findings (or `ok`), then a summary.
    pub fn to_human(&self) -> String {
        let mut out = String::new();
        let header: Vec<String> = self.context.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(out, "pgtenant {}: {}\n", self.kind, header.join(", "));
        for object in self.all_objects() {
            self.render_object(&mut out, &object);
        }
        let _ = writeln!(
            out,
            "{} unsafe, {} warning(s), {} info, {} passed: exit {}",
            self.count(Severity::Unsafe),
            self.count(Severity::Warning),
            self.count(Severity::Info),
            self.passed.len(),
            self.exit_code()
        );
        out
    }

    /// Declared objects first, then any object a finding or pass names that was not declared.
    fn all_objects(&self) -> Vec<String> {
        let mut objects = self.objects.clone();
        let named = self.findings.iter().map(|f| &f.object).chain(self.passed.iter().map(|p| &p.object));
        for object in named {
            if !objects.contains(object) {
                objects.push(object.clone());
            }
        }
        objects
    }

    fn render_object(&self, out: &mut String, object: &str) {
        let _ = writeln!(out, "{object}");
        let mut findings: Vec<&Finding> = self.findings.iter().filter(|f| f.object == object).collect();
        findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.id.cmp(b.id)));
        for f in &findings {
            let _ = writeln!(out, "  {:<8} {:<28} {}", f.severity.label(), f.id, f.why);
            for (i, line) in f.fix.lines().enumerate() {
                let lead = if i == 0 { "fix:" } else { "" };
                let _ = writeln!(out, "  {:<8} {:<28} {lead:<4} {line}", "", "");
            }
        }
        for p in self.passed.iter().filter(|p| p.object == object) {
            let _ = writeln!(out, "  {:<8} {:<28} {}", "PASS", p.id, p.what);
        }
        if findings.is_empty() && !self.passed.iter().any(|p| p.object == object) {
            let _ = writeln!(out, "  ok");
        }
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(severities: &[Severity]) -> Report {
        let findings = severities.iter().map(|&s| Finding::new("x.y", s, "role app_user", "because")).collect();
        Report { kind: "doctor", findings, ..Report::default() }
    }

    #[test]
    fn exit_code_follows_the_worst_finding() {
        assert_eq!(report(&[]).exit_code(), 0);
        assert_eq!(report(&[Severity::Info]).exit_code(), 0);
        assert_eq!(report(&[Severity::Info, Severity::Warning]).exit_code(), 1);
        assert_eq!(report(&[Severity::Unsafe, Severity::Warning]).exit_code(), 2);
    }

    #[test]
    fn human_output_groups_by_object_and_shows_fixes() {
        let mut r = Report { kind: "doctor", ..Report::default() };
        r.object("role app_user");
        r.object("table public.t");
        r.findings.push(
            Finding::new("role.bypassrls", Severity::Unsafe, "role app_user", "it bypasses RLS")
                .fix("ALTER ROLE app_user NOBYPASSRLS;"),
        );
        let text = r.to_human();
        assert!(text.contains("role app_user\n  UNSAFE   role.bypassrls"), "{text}");
        assert!(text.contains("fix: ALTER ROLE app_user NOBYPASSRLS;"), "{text}");
        assert!(text.contains("table public.t\n  ok\n"), "{text}");
        assert!(text.contains("exit 2"), "{text}");
    }

    #[test]
    fn json_has_summary_and_findings() {
        let r = report(&[Severity::Warning]);
        let json = r.to_json();
        assert_eq!(json["exit_code"], 1);
        assert_eq!(json["summary"]["warning"], 1);
        assert_eq!(json["findings"][0]["severity"], "warning");
        assert_eq!(json["findings"][0]["id"], "x.y");
    }
}
