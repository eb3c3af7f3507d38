//! The pooled role must not be able to bypass row-level security: checked on
//! every new server connection, since grants can change at any time.

use super::connect::{ServerConn, UpstreamError};
use crate::config::UpstreamConfig;

/// Is the current user a superuser, does it have BYPASSRLS, and which tables
/// with RLS enabled but not forced does it own (directly or through a role it
/// inherits, which `pg_has_role(..., 'USAGE')` covers)?
const CHECK_SQL: &str = "SELECT r.rolsuper, r.rolbypassrls, \
     (SELECT string_agg(c.oid::regclass::text, ', ' ORDER BY c.oid::regclass::text) FROM pg_catalog.pg_class c \
      WHERE c.relrowsecurity AND NOT c.relforcerowsecurity \
      AND pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE')) \
     FROM pg_catalog.pg_roles r WHERE r.rolname = current_user";

/// Refuses a connection whose role can bypass RLS, unless the operator set
/// `upstream.allow_rls_bypassing_role`, in which case it only warns.
pub async fn check(conn: &mut ServerConn, cfg: &UpstreamConfig) -> Result<(), UpstreamError> {
    let reasons = bypass_reasons_of(conn).await?;
    if reasons.is_empty() {
        return Ok(());
    }
    let message = format!("upstream.user \"{}\" can bypass row-level security: {}", cfg.user, reasons.join("; "));
    if cfg.allow_rls_bypassing_role {
        tracing::warn!(
            "{message}; serving anyway because upstream.allow_rls_bypassing_role = true: TENANTS ARE NOT ISOLATED"
        );
        return Ok(());
    }
    tracing::error!("{message}; refusing to serve");
    Err(UpstreamError::UnsafeRole(format!("{message}; pgtenant refuses to serve through it")))
}

/// Why the connection's role can bypass RLS; empty when it cannot. A check
/// that cannot run is an error (fail closed).
pub async fn bypass_reasons_of(conn: &mut ServerConn) -> Result<Vec<String>, UpstreamError> {
    let row = match conn.simple_query(CHECK_SQL).await? {
        Ok(outcome) => outcome.first_row,
        Err(e) => return Err(UpstreamError::UnsafeRole(format!("could not check upstream.user: {}", e.message))),
    };
    row.as_deref()
        .map(bypass_reasons)
        .ok_or_else(|| UpstreamError::UnsafeRole("could not check upstream.user: no pg_roles row".into()))
}

/// Why the role in a check row can bypass RLS; empty when it cannot.
fn bypass_reasons(row: &[Option<String>]) -> Vec<String> {
    let flag = |i: usize| row.get(i).and_then(|v| v.as_deref()) != Some("f");
    let mut reasons = Vec::new();
    if flag(0) {
        reasons.push("it is a superuser".to_string());
    }
    if flag(1) {
        reasons.push("it has BYPASSRLS".to_string());
    }
    if let Some(Some(tables)) = row.get(2) {
        reasons.push(format!(
            "it owns tables with RLS enabled but not forced ({tables}): ALTER TABLE ... FORCE ROW LEVEL SECURITY"
        ));
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::bypass_reasons;

    fn row(values: &[Option<&str>]) -> Vec<Option<String>> {
        values.iter().map(|v| v.map(str::to_string)).collect()
    }

    #[test]
    fn a_plain_role_passes() {
        assert!(bypass_reasons(&row(&[Some("f"), Some("f"), None])).is_empty());
    }

    #[test]
    fn each_bypass_is_named() {
        let r = bypass_reasons(&row(&[Some("t"), Some("t"), Some("tool_calls")]));
        assert_eq!(r.len(), 3);
        assert!(r[2].contains("tool_calls"));
    }

    #[test]
    fn unreadable_rows_fail_closed() {
        assert_eq!(bypass_reasons(&row(&[None, None])).len(), 2);
    }
}
