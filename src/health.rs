//! Readiness: is the upstream reachable, is the pooled role unable to bypass
//! row-level security, in signed mode does the database accept this proxy's
//! proofs, does the RLS canary see its rows through the tenant injection path
//! (and none without a tenant), and are we not draining?
//!
//! A background task re-checks every `http.ready_check_seconds` on a
//! connection borrowed from the pool (so `upstream.pool_size` stays the
//! upstream's whole budget); when the pool is too busy to lend one, the
//! previous verdict stands: a saturated pool is a working one. `/ready`
//! reports the last result, so probes cost nothing upstream.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::Serialize;

use crate::auth::signing::SigningKey;
use crate::auth::tenant::TenantId;
use crate::server::Shared;
use crate::session::{inject, prepared};
use crate::sql::inspect::Inspection;
use crate::upstream::connect::{ServerConn, ServerError, UpstreamError};
use crate::upstream::{role, Owner, PoolError};

/// The readiness verdict and what it is made of.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Readiness {
    /// Whether `/ready` answers 200.
    pub ready: bool,
    /// The first failed check, in words; empty when ready.
    pub reason: String,
    /// Each check: `"ok"`, `"skipped: ..."` or why it failed.
    pub checks: Checks,
}

/// The individual readiness checks.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Checks {
    /// A server connection can be opened and used.
    pub upstream: String,
    /// `upstream.user` cannot bypass RLS (or the override is set).
    pub role: String,
    /// Signed mode: `pgtenant.current_tenant()` accepts this proxy's proof.
    pub signed: String,
    /// The canary tenant sees rows, and no tenant sees none.
    pub canary: String,
    /// Token verification keys are loaded.
    pub keys: String,
    /// Not draining.
    pub draining: String,
}

/// Shared readiness state.
#[derive(Debug)]
pub struct Health {
    last: Mutex<Readiness>,
    draining: AtomicBool,
}

const PENDING: &str = "not checked yet";

impl Default for Health {
    fn default() -> Health {
        let checks = Checks {
            upstream: PENDING.into(),
            role: PENDING.into(),
            signed: PENDING.into(),
            canary: PENDING.into(),
            keys: PENDING.into(),
            draining: "ok".into(),
        };
        let last = Readiness { ready: false, reason: "starting: readiness not checked yet".into(), checks };
        Health { last: Mutex::new(last), draining: AtomicBool::new(false) }
    }
}

impl Health {
    /// The current verdict (draining applies at once, without waiting for a check).
    pub fn readiness(&self) -> Readiness {
        let mut r = self.last.lock().expect("health lock").clone();
        if self.is_draining() {
            r.ready = false;
            r.reason = "draining: shutting down".into();
            r.checks.draining = "draining".into();
        }
        r
    }

    /// Marks the start of a drain: `/ready` fails from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether a drain has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    fn store(&self, next: Readiness) {
        let mut last = self.last.lock().expect("health lock");
        if last.ready != next.ready || last.reason != next.reason {
            match next.ready {
                true => tracing::info!("ready"),
                false => tracing::warn!(reason = %next.reason, "not ready"),
            }
        }
        *last = next;
    }
}

/// Re-checks readiness forever.
pub async fn watch(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.config().http.ready_check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if shared.health.is_draining() {
            return;
        }
        if let Some(readiness) = check(&shared).await {
            shared.health.store(readiness);
        }
    }
}

/// One round of checks; `None` when the pool had no connection to spare.
async fn check(shared: &Shared) -> Option<Readiness> {
    let mut checks = Checks {
        upstream: "ok".into(),
        role: "ok".into(),
        signed: "ok".into(),
        canary: "ok".into(),
        keys: match shared.verifier.load().keys_ready() {
            Ok(()) => "ok".into(),
            Err(why) => why,
        },
        draining: "ok".into(),
    };
    let timeout = shared.config().upstream.connect_timeout;
    match tokio::time::timeout(timeout * 2, upstream_checks(shared, &mut checks)).await {
        Ok(true) => {}
        Ok(false) => return None,
        Err(_) => {
            checks.upstream = "timed out checking the upstream".into();
            checks.role = SKIPPED.into();
            checks.signed = SKIPPED.into();
            checks.canary = SKIPPED.into();
        }
    }
    Some(verdict(checks))
}

const SKIPPED: &str = "skipped: upstream not reachable";

/// Fills in the upstream, role and canary checks; false when the pool was busy.
async fn upstream_checks(shared: &Shared, checks: &mut Checks) -> bool {
    let mut pooled = match shared.pool.checkout(&Owner::Proxy, BORROW_WAIT).await {
        Ok(p) => p,
        Err(PoolError::Timeout(_)) => return false,
        Err(PoolError::Connect(UpstreamError::UnsafeRole(why))) => {
            checks.role = why;
            checks.signed = "skipped: the role check failed".into();
            checks.canary = "skipped: the role check failed".into();
            return true;
        }
        Err(PoolError::Connect(e)) => {
            checks.upstream = format!("cannot connect: {e}");
            checks.role = SKIPPED.into();
            checks.signed = SKIPPED.into();
            checks.canary = SKIPPED.into();
            return true;
        }
    };
    let conn = &mut pooled.conn;
    // Grants can change after a connection was opened: ask again.
    match role::bypass_reasons_of(conn).await {
        Ok(reasons) if reasons.is_empty() => {}
        Ok(reasons) if shared.config().upstream.allow_rls_bypassing_role => {
            checks.role = format!("overridden (upstream.allow_rls_bypassing_role): {}", reasons.join("; "));
        }
        Ok(reasons) => {
            checks.role = format!("upstream.user can bypass row-level security: {}", reasons.join("; "));
        }
        Err(e) => {
            checks.upstream = format!("upstream failed during the check: {e}");
            checks.role = SKIPPED.into();
            checks.signed = SKIPPED.into();
            checks.canary = SKIPPED.into();
            return true;
        }
    }
    match signed_check(shared, conn).await {
        Ok(verdict) => checks.signed = verdict,
        Err(e) => {
            checks.signed = format!("upstream failed during the signed-mode check: {e}");
            checks.canary = SKIPPED.into();
            return true;
        }
    }
    match canary(shared, conn).await {
        Ok(verdict) => checks.canary = verdict,
        Err(e) => {
            checks.canary = format!("upstream failed during the canary: {e}");
            return true;
        }
    }
    // Both queries leave nothing behind (the canary's SET LOCAL ended with
    // its implicit transaction), so the connection can go back.
    if conn.rbuf.is_empty() {
        shared.pool.checkin(pooled);
    }
    true
}

/// How long the checker waits for a pool connection before keeping its last verdict.
const BORROW_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs the canary query for the canary tenant, rewritten by the same code
/// that injects the tenant into client queries, and once without a tenant.
async fn canary(shared: &Shared, conn: &mut ServerConn) -> Result<String, UpstreamError> {
    let Some(tenant) = &shared.config().http.canary_tenant else {
        return Ok("skipped: http.canary_tenant is not set".into());
    };
    let query = &shared.config().http.canary_query;
    let sql = Bytes::copy_from_slice(query.as_bytes());
    let insp = shared.inspector.inspect(query.as_bytes(), true);
    if insp.statements.len() != 1 || inject::refusal(&insp.statements[0]).is_some() || insp.lex_error {
        return Ok("http.canary_query must be one plain statement that pgtenant would not refuse".into());
    }
    let with_tenant = match with_tenant_count(shared, conn, tenant, &sql, &insp).await? {
        Ok(n) => n,
        Err(e) => return Ok(format!("the canary query failed: {e}")),
    };
    let without = match count(conn, query).await? {
        Ok(n) => n,
        Err(e) => return Ok(format!("the canary query failed without a tenant: {e}")),
    };
    Ok(match (with_tenant, without) {
        (0, _) => match shared.config().tenant.mode.signing_key() {
            None => format!(
                "the canary tenant {} sees 0 rows: tenant context injection is broken (or the seed rows are missing)",
                tenant.as_str()
            ),
            Some(key) => format!(
                "the canary tenant {} sees 0 rows: is the signing key {} in pgtenant.signing_keys, and do the \
                 policies call pgtenant.current_tenant()? (or the seed rows are missing)",
                tenant.as_str(),
                key.kid()
            ),
        },
        (_, n) if n > 0 => {
            format!("the canary query sees {n} rows with no tenant set: row-level security is not enforced")
        }
        _ => "ok".into(),
    })
}

/// The canary's count for `tenant`, set the way client transactions get it:
/// plain mode rewrites the query with `SET LOCAL`; signed mode binds the
/// tenant and its proof to the proxy's tenant statement (never a literal,
/// which other sessions could read in `pg_stat_activity`).
async fn with_tenant_count(
    shared: &Shared,
    conn: &mut ServerConn,
    tenant: &TenantId,
    sql: &Bytes,
    insp: &Inspection,
) -> Result<Result<i64, String>, UpstreamError> {
    let config = shared.config();
    let Some(key) = config.tenant.mode.signing_key() else {
        let tenant_stmt = inject::set_local(&config.tenant.setting, tenant);
        let rewritten = inject::rewrite_query(sql, insp, Some(&tenant_stmt), true).expect("injection always rewrites");
        return count(conn, &String::from_utf8_lossy(&rewritten.text)).await;
    };
    Ok(match signed_first_value(conn, &config.tenant.setting, key, tenant.as_str(), sql).await? {
        Ok(value) => value.and_then(|v| v.parse().ok()).ok_or_else(|| "its first column is not a count".to_string()),
        Err(e) => Err(format!("{} ({})", e.message, e.code)),
    })
}

/// Binds `tenant` and its proof to the tenant statement exactly as client
/// transactions get them, then runs `sql` in the same transaction; returns
/// the first column of its first row.
async fn signed_first_value(
    conn: &mut ServerConn,
    setting: &str,
    key: &SigningKey,
    tenant: &str,
    sql: &[u8],
) -> Result<Result<Option<String>, ServerError>, UpstreamError> {
    let stmt = prepared::tenant_statement(setting, true);
    let proof = key.proof(tenant);
    let params: [&[u8]; 2] = [tenant.as_bytes(), proof.as_bytes()];
    let rows = conn.extended_query(&[(&stmt.text, &params), (sql, &[])]).await?;
    Ok(rows.map(|rows| rows.into_iter().nth(1).flatten().and_then(|row| row.into_iter().next().flatten())))
}

/// A tenant id valid in both formats, used only to check that the database
/// verifies this proxy's proofs; no rows belong to it.
const CHECK_TENANT: &str = "00000000-0000-0000-0000-000000000000";

/// Signed mode: binds a tenant and its proof exactly as client transactions
/// get them and asks `pgtenant.current_tenant()` for the verdict, which needs
/// no seed rows and tells a missing key from a missing setup.
async fn signed_check(shared: &Shared, conn: &mut ServerConn) -> Result<String, UpstreamError> {
    let config = shared.config();
    let Some(key) = config.tenant.mode.signing_key() else {
        return Ok("skipped: tenant.mode is plain".into());
    };
    let verify = b"SELECT pgtenant.current_tenant()";
    Ok(match signed_first_value(conn, &config.tenant.setting, key, CHECK_TENANT, verify).await? {
        Ok(value) => match value {
            Some(t) if t == CHECK_TENANT => "ok".into(),
            _ => format!(
                "the database does not accept this proxy's proofs: add its key (id {}) with \
                 SELECT pgtenant.add_signing_key(...), see README \"Signed tenant context\"",
                key.kid()
            ),
        },
        Err(e) => format!(
            "pgtenant.current_tenant() failed: {} ({}); run the SQL of pgtenant policy --signed",
            e.message, e.code
        ),
    })
}

/// Runs a query whose first column of the first row is a count.
async fn count(conn: &mut ServerConn, sql: &str) -> Result<Result<i64, String>, UpstreamError> {
    Ok(match conn.simple_query(sql).await? {
        Ok(outcome) => {
            let value = outcome.first_row.and_then(|row| row.into_iter().next().flatten());
            value.and_then(|v| v.parse().ok()).ok_or_else(|| "its first column is not a count".to_string())
        }
        Err(e) => Err(format!("{} ({})", e.message, e.code)),
    })
}

/// Ready when every check is `ok`, `skipped: ...` or `overridden ...`.
fn verdict(checks: Checks) -> Readiness {
    let all = [
        ("upstream", &checks.upstream),
        ("role", &checks.role),
        ("signed", &checks.signed),
        ("canary", &checks.canary),
        ("keys", &checks.keys),
        ("draining", &checks.draining),
    ];
    let failed =
        all.iter().find(|(_, v)| !(v.as_str() == "ok" || v.starts_with("skipped") || v.starts_with("overridden")));
    // An unreachable upstream is the root cause; later checks only say "skipped".
    let reason = failed.map(|(name, v)| format!("{name}: {v}")).unwrap_or_default();
    Readiness { ready: failed.is_none(), reason, checks }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checks() -> Checks {
        Checks {
            upstream: "ok".into(),
            role: "ok".into(),
            signed: "skipped: tenant.mode is plain".into(),
            canary: "skipped: http.canary_tenant is not set".into(),
            keys: "ok".into(),
            draining: "ok".into(),
        }
    }

    #[test]
    fn ready_only_when_every_check_passes() {
        assert!(verdict(checks()).ready);
        let mut c = checks();
        c.role = "upstream.user can bypass row-level security: it is a superuser".into();
        let r = verdict(c);
        assert!(!r.ready);
        assert!(r.reason.starts_with("role: upstream.user can bypass"), "{}", r.reason);
        let mut c = checks();
        c.role = "overridden (upstream.allow_rls_bypassing_role): it is a superuser".into();
        assert!(verdict(c).ready);
    }

    #[test]
    fn draining_overrides_everything() {
        let h = Health::default();
        h.store(verdict(checks()));
        assert!(h.readiness().ready);
        h.start_draining();
        let r = h.readiness();
        assert!(!r.ready);
        assert_eq!(r.checks.draining, "draining");
    }
}
