//! Session parameters that follow a client from server connection to server
//! connection: the startup packet's settings and every session-level `SET`.
//!
//! Values are never parsed out of the client's SQL. After a transaction in
//! which the client changed settings, the proxy reads them back from the
//! server (`current_setting`), so commits, rollbacks and server-side
//! normalisation are exactly right. When the client next gets a server
//! connection whose values differ, one hidden Query brings them in line.

use std::collections::BTreeMap;

/// Settings by lowercase name; an absent name is at the server's default.
pub type Settings = BTreeMap<String, String>;

/// Startup parameters that are protocol fields, not settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// Session state a client may set but that cannot follow it safely: a
/// connection where it was changed is closed rather than pooled.
pub const NOT_FOLLOWED: &[&str] = &["role", "session_authorization", "session_characteristics"];

/// Whether a setting name can be embedded in SQL as-is (GUC names are
/// identifiers, possibly dotted).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 200 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

/// Whether SQL text mentions `set_config` in any case. Its third argument
/// may make it session-wide, under a name only the server sees, so such text
/// is treated as changing session state.
pub fn mentions_set_config(sql: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"set_config";
    // Only positions starting with 's' are compared: cheap on large texts.
    sql.iter()
        .enumerate()
        .any(|(i, &b)| b | 0x20 == b's' && sql.get(i..i + NEEDLE.len()).is_some_and(|w| w.eq_ignore_ascii_case(NEEDLE)))
}

/// A single-quoted SQL literal.
pub fn quote_literal(value: &str, standard_conforming_strings: bool) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' if !standard_conforming_strings => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The settings in a StartupMessage: every parameter but the protocol ones,
/// plus `-c name=value` and `--name=value` inside `options`.
pub fn from_startup(params: &[(String, String)]) -> Result<Settings, String> {
    let mut out = Settings::new();
    for (name, value) in params {
        if name == "options" {
            for (n, v) in parse_options(value)? {
                insert(&mut out, &n, v)?;
            }
        } else if !NOT_SETTINGS.contains(&name.as_str()) {
            insert(&mut out, name, value.clone())?;
        }
    }
    Ok(out)
}

fn insert(out: &mut Settings, name: &str, value: String) -> Result<(), String> {
    let name = name.to_ascii_lowercase();
    if !valid_name(&name) {
        return Err(format!("invalid parameter name \"{name}\""));
    }
    out.insert(name, value);
    Ok(())
}

/// Splits `options` the way PostgreSQL does: whitespace separates words,
/// a backslash takes the next character literally; `-c name=value`,
/// `-cname=value` and `--name=value` set parameters (dashes in the name of
/// the last form become underscores).
pub fn parse_options(options: &str) -> Result<Vec<(String, String)>, String> {
    let words = split_words(options);
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let word = &words[i];
        let pair = if word == "-c" {
            i += 1;
            words.get(i).cloned().ok_or("-c without a value in options")?
        } else if let Some(rest) = word.strip_prefix("--") {
            rest.replace('-', "_")
        } else if let Some(rest) = word.strip_prefix("-c") {
            rest.to_string()
        } else {
            return Err(format!("unsupported word in options: \"{word}\""));
        };
        let (name, value) =
            pair.split_once('=').ok_or_else(|| format!("expected name=value in options: \"{pair}\""))?;
        out.push((name.replace('-', "_"), value.to_string()));
        i += 1;
    }
    Ok(out)
}

fn split_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_ascii_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// `RESET` statements for the settings `current` has and `desired` lacks.
pub fn reset_statements(desired: &Settings, current: &Settings) -> Vec<String> {
    current.keys().filter(|n| !desired.contains_key(*n)).map(|n| format!("RESET {n}")).collect()
}

/// One `SELECT set_config(...)` for the settings whose values differ.
pub fn set_statement(desired: &Settings, current: &Settings, scs: bool) -> Option<String> {
    let sets: Vec<String> = desired
        .iter()
        .filter(|(n, v)| current.get(*n) != Some(*v))
        .map(|(n, v)| format!("pg_catalog.set_config('{n}', {}, false)", quote_literal(v, scs)))
        .collect();
    (!sets.is_empty()).then(|| format!("SELECT {}", sets.join(", ")))
}

/// SQL that takes a server connection from `current` to `desired`, or
/// `None` when they already agree.
pub fn apply_sql(desired: &Settings, current: &Settings, scs: bool) -> Option<String> {
    let mut statements = reset_statements(desired, current);
    statements.extend(set_statement(desired, current, scs));
    (!statements.is_empty()).then(|| statements.join("; "))
}

/// SQL reading the current value of each name, one column each, in order
/// (NULL for a name the server does not know).
pub fn capture_sql(names: &[String]) -> String {
    let cols: Vec<String> = names.iter().map(|n| format!("pg_catalog.current_setting('{n}', true)")).collect();
    format!("SELECT {}", cols.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn startup_parameters_become_settings() {
        let params: Vec<(String, String)> = [
            ("user", "u"),
            ("database", "app"),
            ("DateStyle", "ISO"),
            ("application_name", "psql"),
            ("options", "-c search_path=a,b --statement-timeout=5s -cwork_mem=1MB"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let s = from_startup(&params).unwrap();
        let expected = settings(&[
            ("application_name", "psql"),
            ("datestyle", "ISO"),
            ("search_path", "a,b"),
            ("statement_timeout", "5s"),
            ("work_mem", "1MB"),
        ]);
        assert_eq!(s, expected);
    }

    #[test]
    fn options_honour_backslash_escapes() {
        let got = parse_options(r"-c search_path=a,\ b -c x.y=1").unwrap();
        assert_eq!(got, vec![("search_path".into(), "a, b".into()), ("x.y".into(), "1".into())]);
        assert!(parse_options("-c").is_err());
        assert!(parse_options("junk").is_err());
        assert!(parse_options("-c noequals").is_err());
    }

    #[test]
    fn bad_names_are_refused() {
        let params = vec![("a;b".to_string(), "1".to_string())];
        assert!(from_startup(&params).is_err());
    }

    #[test]
    fn set_config_is_found_in_any_case() {
        assert!(mentions_set_config(b"select SET_CONFIG('a', 'b', false)"));
        assert!(mentions_set_config(b"set_config"));
        assert!(!mentions_set_config(b"select set_confi"));
        assert!(!mentions_set_config(b""));
    }

    #[test]
    fn literals_are_quoted() {
        assert_eq!(quote_literal("it's", true), "'it''s'");
        assert_eq!(quote_literal(r"a\b", true), r"'a\b'");
        assert_eq!(quote_literal(r"a\b", false), r"'a\\b'");
    }

    #[test]
    fn apply_resets_and_sets_only_the_differences() {
        let desired = settings(&[("search_path", "a"), ("timezone", "UTC")]);
        let current = settings(&[("timezone", "UTC"), ("work_mem", "1MB")]);
        assert_eq!(
            apply_sql(&desired, &current, true).unwrap(),
            "RESET work_mem; SELECT pg_catalog.set_config('search_path', 'a', false)"
        );
        assert_eq!(apply_sql(&desired, &desired, true), None);
    }

    #[test]
    fn capture_reads_each_name() {
        let sql = capture_sql(&["search_path".into(), "timezone".into()]);
        assert_eq!(
            sql,
            "SELECT pg_catalog.current_setting('search_path', true), pg_catalog.current_setting('timezone', true)"
        );
    }
}
