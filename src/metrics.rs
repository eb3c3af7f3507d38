//! Prometheus metrics: the recorder, the handles the hot path increments,
//! per-tenant counts with bounded label cardinality, and the `/metrics` text.
//!
//! Counters on the hot path are resolved once into handles ([`hot`]), so an
//! increment is one atomic add, never a registry lookup. Gauges that describe
//! state (pool, clients, tenants) are read from that state at scrape time.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use dashmap::DashMap;
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::HttpConfig;

/// Buckets for every `_seconds` histogram: 100 µs to 60 s.
const SECONDS_BUCKETS: &[f64] =
    &[0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Tenants tracked individually at most; beyond, new tenants count only in totals.
const MAX_TRACKED_TENANTS: usize = 100_000;

/// Installs the process-wide recorder; returns the handle that renders it.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)?;
    describe();
    Ok(handle)
}

/// Handles for the metrics updated on every message or transaction.
pub struct Hot {
    /// Simple Query and Execute messages from clients.
    pub queries: Counter,
    /// Transactions (server connection lent and given back).
    pub transactions: Counter,
    /// How long a server connection was held for one transaction.
    pub transaction_seconds: Histogram,
    /// How long a client waited for a server connection.
    pub pool_wait_seconds: Histogram,
    /// Bytes read from clients.
    pub bytes_in: Counter,
    /// Bytes written to clients.
    pub bytes_out: Counter,
    /// New server connections opened.
    pub server_connects: Counter,
    /// Server connections that could not be opened.
    pub server_connect_failures: Counter,
}

/// The hot-path handles, bound to whatever recorder is installed when first used.
pub fn hot() -> &'static Hot {
    static HOT: OnceLock<Hot> = OnceLock::new();
    HOT.get_or_init(|| Hot {
        queries: metrics::counter!("pgtenant_queries_total"),
        transactions: metrics::counter!("pgtenant_transactions_total"),
        transaction_seconds: metrics::histogram!("pgtenant_transaction_duration_seconds"),
        pool_wait_seconds: metrics::histogram!("pgtenant_pool_wait_seconds"),
        bytes_in: metrics::counter!("pgtenant_client_bytes_received_total"),
        bytes_out: metrics::counter!("pgtenant_client_bytes_sent_total"),
        server_connects: metrics::counter!("pgtenant_server_connects_total"),
        server_connect_failures: metrics::counter!("pgtenant_server_connect_failures_total"),
    })
}

/// A successful login.
pub fn login_ok() {
    metrics::counter!("pgtenant_logins_total").increment(1);
}

/// A refused login; `reason` is one of a small fixed set of labels.
pub fn login_failed(reason: &'static str) {
    metrics::counter!("pgtenant_login_failures_total", "reason" => reason).increment(1);
}

/// A statement refused by the proxy; `kind` is one of a small fixed set of labels.
pub fn statement_refused(kind: &'static str) {
    metrics::counter!("pgtenant_refused_statements_total", "kind" => kind).increment(1);
}

/// Per-tenant counts: connected clients and transactions.
#[derive(Debug, Default)]
pub struct Tenants {
    map: DashMap<Arc<str>, Arc<TenantStats>>,
    connected: AtomicUsize,
}

/// One tenant's counts; a session keeps its `Arc` so counting needs no lookup.
#[derive(Debug, Default)]
pub struct TenantStats {
    clients: AtomicUsize,
    transactions: AtomicU64,
}

impl TenantStats {
    /// Counts one transaction.
    pub fn transaction(&self) {
        self.transactions.fetch_add(1, Ordering::Relaxed);
    }
}

/// A connected client of a tenant; dropping it counts the client out.
#[derive(Debug)]
pub struct ClientGuard {
    tenants: Arc<Tenants>,
    stats: Arc<TenantStats>,
}

impl ClientGuard {
    /// The tenant's counts.
    pub fn stats(&self) -> &TenantStats {
        &self.stats
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.stats.clients.fetch_sub(1, Ordering::Relaxed);
        self.tenants.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Tenants {
    /// Counts a client of `tenant` in until the guard drops.
    pub fn connect(self: &Arc<Self>, tenant: &str) -> ClientGuard {
        let stats = match self.map.get(tenant) {
            Some(s) => s.clone(),
            None if self.map.len() >= MAX_TRACKED_TENANTS => Arc::new(TenantStats::default()),
            None => self.map.entry(Arc::from(tenant)).or_default().clone(),
        };
        stats.clients.fetch_add(1, Ordering::Relaxed);
        self.connected.fetch_add(1, Ordering::Relaxed);
        ClientGuard { tenants: self.clone(), stats }
    }

    /// Clients logged in now.
    pub fn connected_clients(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    /// Tenants with at least one client logged in now.
    pub fn active(&self) -> usize {
        self.map.iter().filter(|e| e.clients.load(Ordering::Relaxed) > 0).count()
    }

    /// Transaction counts of the `top` busiest tenants (all when `all`), busiest first.
    pub fn transaction_counts(&self, top: usize, all: bool) -> Vec<(Arc<str>, u64)> {
        let mut counts: Vec<(Arc<str>, u64)> = self
            .map
            .iter()
            .map(|e| (e.key().clone(), e.transactions.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        if !all {
            counts.truncate(top);
        }
        counts
    }
}

/// Point-in-time values set as gauges just before rendering.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    /// Server connections lent to clients (or the proxy) right now.
    pub server_active: usize,
    /// Server connections idle in the pool.
    pub server_idle: usize,
    /// Server connections open, idle or lent.
    pub server_open: usize,
    /// `upstream.pool_size`.
    pub pool_size: usize,
    /// Logged-in clients.
    pub clients_connected: usize,
    /// Clients waiting for a server connection.
    pub clients_waiting: usize,
    /// Tenants with a logged-in client.
    pub active_tenants: usize,
    /// Whether `/ready` answers 200.
    pub ready: bool,
    /// Whether a drain is under way.
    pub draining: bool,
}

/// Renders the Prometheus text: the recorder's metrics, the snapshot gauges,
/// and the per-tenant counters chosen by `cfg`.
pub fn render(handle: &PrometheusHandle, snap: Snapshot, tenants: &Tenants, cfg: &HttpConfig) -> String {
    let gauge = |name: &'static str, v: usize| metrics::gauge!(name).set(v as f64);
    gauge("pgtenant_pool_server_connections_active", snap.server_active);
    gauge("pgtenant_pool_server_connections_idle", snap.server_idle);
    gauge("pgtenant_pool_server_connections", snap.server_open);
    gauge("pgtenant_pool_size", snap.pool_size);
    gauge("pgtenant_clients_connected", snap.clients_connected);
    gauge("pgtenant_clients_active", snap.server_active);
    gauge("pgtenant_clients_waiting", snap.clients_waiting);
    gauge("pgtenant_active_tenants", snap.active_tenants);
    gauge("pgtenant_ready", usize::from(snap.ready));
    gauge("pgtenant_draining", usize::from(snap.draining));
    let mut text = handle.render();
    let counts = tenants.transaction_counts(cfg.tenant_metrics_top, cfg.tenant_metrics_all);
    if !counts.is_empty() {
        text.push_str("# HELP pgtenant_tenant_transactions_total Transactions per tenant (the busiest http.tenant_metrics_top tenants, or all with http.tenant_metrics_all).\n");
        text.push_str("# TYPE pgtenant_tenant_transactions_total counter\n");
        for (tenant, n) in counts {
            let _ = writeln!(text, "pgtenant_tenant_transactions_total{{tenant=\"{}\"}} {n}", escape_label(&tenant));
        }
    }
    text
}

fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!("pgtenant_queries_total", "Simple Query and Execute messages from clients.");
    describe_counter!("pgtenant_transactions_total", "Transactions served (a server connection lent and given back).");
    describe_histogram!(
        "pgtenant_transaction_duration_seconds",
        Unit::Seconds,
        "How long a client held a server connection for one transaction."
    );
    describe_histogram!(
        "pgtenant_pool_wait_seconds",
        Unit::Seconds,
        "How long a client waited for a server connection."
    );
    describe_counter!("pgtenant_client_bytes_received_total", Unit::Bytes, "Bytes read from clients.");
    describe_counter!("pgtenant_client_bytes_sent_total", Unit::Bytes, "Bytes written to clients.");
    describe_counter!("pgtenant_server_connects_total", "Server connections opened.");
    describe_counter!("pgtenant_server_connect_failures_total", "Server connections that could not be opened.");
    describe_counter!("pgtenant_logins_total", "Successful client logins.");
    describe_counter!("pgtenant_login_failures_total", "Refused client logins, by reason.");
    describe_counter!("pgtenant_refused_statements_total", "Statements the proxy refused, by kind.");
    describe_gauge!("pgtenant_pool_server_connections_active", "Server connections lent out now.");
    describe_gauge!("pgtenant_pool_server_connections_idle", "Server connections idle in the pool.");
    describe_gauge!("pgtenant_pool_server_connections", "Server connections open (active + idle).");
    describe_gauge!("pgtenant_pool_size", "upstream.pool_size: server connections at most.");
    describe_gauge!("pgtenant_clients_connected", "Clients logged in.");
    describe_gauge!("pgtenant_clients_active", "Clients holding a server connection (in a transaction).");
    describe_gauge!("pgtenant_clients_waiting", "Clients waiting for a server connection.");
    describe_gauge!("pgtenant_active_tenants", "Tenants with at least one client logged in.");
    describe_gauge!("pgtenant_ready", "1 when /ready answers 200.");
    describe_gauge!("pgtenant_draining", "1 while a SIGTERM drain is under way.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_counts_are_bounded_to_the_busiest() {
        let tenants = Arc::new(Tenants::default());
        let guards: Vec<ClientGuard> = (0..50).map(|i| tenants.connect(&format!("t{i:02}"))).collect();
        for (i, g) in guards.iter().enumerate() {
            for _ in 0..i {
                g.stats().transaction();
            }
        }
        let top = tenants.transaction_counts(3, false);
        assert_eq!(
            top.iter().map(|(t, n)| (t.as_ref(), *n)).collect::<Vec<_>>(),
            [("t49", 49), ("t48", 48), ("t47", 47)]
        );
        assert_eq!(tenants.transaction_counts(3, true).len(), 49, "all tenants with a transaction");
        assert_eq!((tenants.connected_clients(), tenants.active()), (50, 50));
        drop(guards);
        assert_eq!((tenants.connected_clients(), tenants.active()), (0, 0));
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
    }
}
