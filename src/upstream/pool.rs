//! The pool of server connections: at most `pool_size` of them, handed out
//! one transaction at a time; admission (per-tenant cap, fair turns) is the
//! [`Gate`]'s job.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::connect::{Connector, ServerConn, UpstreamError};
use super::gate::{Gate, GateStats, Owner, Permit};
use thiserror::Error;

/// Why no server connection could be handed out.
#[derive(Debug, Error)]
pub enum PoolError {
    /// Every connection stayed busy for the whole wait.
    #[error("no server connection became free within {0:?}")]
    Timeout(Duration),
    /// Opening a new connection failed.
    #[error(transparent)]
    Connect(#[from] UpstreamError),
}

/// A bounded pool of logged-in server connections.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    connector: Connector,
    // A lent permit is a connection that may exist, idle ones excluded.
    gate: Arc<Gate>,
    // A std Mutex is fine: it is held only to push or pop, never across .await.
    idle: Mutex<Vec<(ServerConn, Counted)>>,
    // Connections open now, idle or lent; each holds a `Counted`.
    open: Arc<AtomicUsize>,
    server_params: Mutex<Option<ServerParams>>,
}

/// ParameterStatus values a server reported at login.
pub type ServerParams = Arc<Vec<(String, String)>>;

/// A server connection lent to one client; give it back with [`Pool::checkin`]
/// or drop it to close the connection and free its slot.
pub struct Pooled {
    /// The connection itself.
    pub conn: ServerConn,
    _permit: Permit,
    counted: Counted,
}

/// One open server connection, counted until dropped.
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(open: &Arc<AtomicUsize>) -> Counted {
        open.fetch_add(1, Ordering::AcqRel);
        Counted(open.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Pool {
    /// A pool that opens connections with `connector`, `size` at most,
    /// `per_tenant` at most to one tenant.
    pub fn new(connector: Connector, size: usize, per_tenant: usize) -> Pool {
        let inner = Inner {
            connector,
            gate: Gate::new(size, per_tenant),
            idle: Mutex::new(Vec::new()),
            open: Arc::default(),
            server_params: Mutex::new(None),
        };
        Pool { inner: Arc::new(inner) }
    }

    /// Waits up to `wait` for a slot for `owner`, then hands out an idle
    /// connection that is still alive, or opens a new one.
    pub async fn checkout(&self, owner: &Owner, wait: Duration) -> Result<Pooled, PoolError> {
        let started = std::time::Instant::now();
        let permit = tokio::time::timeout(wait, self.inner.gate.acquire(owner.clone()))
            .await
            .map_err(|_| PoolError::Timeout(wait))?;
        crate::metrics::hot().pool_wait_seconds.record(started.elapsed().as_secs_f64());
        while let Some((mut conn, counted)) = self.pop_idle() {
            if !conn.is_broken() {
                return Ok(Pooled { conn, _permit: permit, counted });
            }
            tracing::info!("discarding a broken idle server connection");
        }
        let conn = self.inner.connector.connect().await.inspect_err(|_| {
            crate::metrics::hot().server_connect_failures.increment(1);
        })?;
        crate::metrics::hot().server_connects.increment(1);
        self.remember_params(&conn);
        Ok(Pooled { conn, _permit: permit, counted: Counted::new(&self.inner.open) })
    }

    /// Returns a connection that is idle (`ReadyForQuery 'I'`, nothing pending).
    pub fn checkin(&self, pooled: Pooled) {
        let Pooled { conn, _permit, counted } = pooled;
        // After a reload shrank the pool, connections beyond the new size close.
        if self.inner.open.load(Ordering::Acquire) <= self.inner.gate.size() {
            self.inner.idle.lock().expect("pool lock").push((conn, counted));
        }
    }

    /// The server's ParameterStatus values, as reported to a new connection;
    /// opens a connection the first time if none has been made yet.
    pub async fn server_params(&self, wait: Duration) -> Result<ServerParams, PoolError> {
        if let Some(p) = self.inner.server_params.lock().expect("pool lock").clone() {
            return Ok(p);
        }
        let pooled = self.checkout(&Owner::Proxy, wait).await?;
        self.remember_params(&pooled.conn);
        self.checkin(pooled);
        let params = self.inner.server_params.lock().expect("pool lock").clone();
        Ok(params.unwrap_or_default())
    }

    /// Admission counts: lent connections, waiting clients, active owners.
    pub fn gate_stats(&self) -> GateStats {
        self.inner.gate.stats()
    }

    /// Number of idle connections (for tests and metrics).
    pub fn idle_count(&self) -> usize {
        self.inner.idle.lock().expect("pool lock").len()
    }

    /// Changes the pool size and the per-tenant cap (configuration reload).
    /// Shrinking closes nothing: connections beyond the new size are closed
    /// as they come back, because no permit lets them out again.
    pub fn resize(&self, size: usize, per_tenant: usize) {
        self.inner.gate.resize(size, per_tenant);
        let mut idle = self.inner.idle.lock().expect("pool lock");
        let excess = self.inner.open.load(Ordering::Acquire).saturating_sub(size).min(idle.len());
        idle.drain(..excess);
    }

    /// Closes every idle connection cleanly (at shutdown).
    pub async fn close_idle(&self) -> usize {
        let idle = std::mem::take(&mut *self.inner.idle.lock().expect("pool lock"));
        let n = idle.len();
        for (conn, _counted) in idle {
            conn.terminate().await;
        }
        n
    }

    /// The upstream address, for cancel requests.
    pub fn upstream_addr(&self) -> (String, u16) {
        let cfg = &self.inner.connector.cfg;
        (cfg.host.clone(), cfg.port)
    }

    /// Server connections open now, idle or lent.
    pub fn open_count(&self) -> usize {
        self.inner.open.load(Ordering::Acquire)
    }

    fn pop_idle(&self) -> Option<(ServerConn, Counted)> {
        // Most recently used first: its socket and backend caches are warm.
        self.inner.idle.lock().expect("pool lock").pop()
    }

    fn remember_params(&self, conn: &ServerConn) {
        // Always the newest: an upstream restart may have changed the version.
        *self.inner.server_params.lock().expect("pool lock") = Some(Arc::new(conn.params.clone()));
    }
}
