//! The accept loop: one task per client, bounded by `max_client_conn`, with
//! the startup phase under `startup_timeout`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{watch, Semaphore};

use crate::auth::jwt::Verifier;
use crate::cancel::Registry;
use crate::config::{Config, UpstreamTls};
use crate::health::Health;
use crate::metrics::Tenants;
use crate::session::backoff::LoginBackoff;
use crate::session::login::{self, Outcome};
use crate::session::{client, Fatal};
use crate::sql::inspect::Inspector;
use crate::tls::ReloadingServerConfig;
use crate::upstream::connect::Connector;
use crate::upstream::Pool;

/// Everything sessions share, built once from the configuration.
pub struct Shared {
    /// The validated configuration.
    pub config: Config,
    /// Verifies client tokens.
    pub verifier: Verifier,
    /// Classifies client SQL.
    pub inspector: Inspector,
    /// Server connections.
    pub pool: Pool,
    /// Cancel keys of live clients.
    pub cancel: Arc<Registry>,
    /// TLS for clients, when a certificate is configured.
    pub tls: Option<Arc<ReloadingServerConfig>>,
    /// Server-side names of prepared statements.
    pub prepared: crate::session::prepared::Registry,
    /// Failed-login counts per client address.
    pub backoff: LoginBackoff,
    /// Readiness and drain state.
    pub health: Health,
    /// Per-tenant client and transaction counts.
    pub tenants: Arc<Tenants>,
    /// Running, draining or closing; sessions watch it.
    pub phase: watch::Sender<Phase>,
}

/// Where the process is in its life; a SIGTERM moves it forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Serving.
    Running,
    /// Not accepting; sessions end as soon as they are idle (57P01).
    Draining,
    /// The drain timed out: sessions end now, even mid-transaction.
    Closing,
}

impl Shared {
    /// Builds the shared state, loading keys and certificates.
    pub fn new(config: Config) -> anyhow::Result<Shared> {
        let verifier = Verifier::new(&config.auth).context("loading the JWT verification key")?;
        let tls = match &config.listen.tls {
            Some(files) => Some(Arc::new(ReloadingServerConfig::load(&files.cert, &files.key)?)),
            None => None,
        };
        let upstream_tls = match config.upstream.tls {
            UpstreamTls::Disable => None,
            UpstreamTls::VerifyFull => Some(crate::tls::upstream_config(config.upstream.tls_ca_file.as_deref())?),
            UpstreamTls::Prefer | UpstreamTls::Require => Some(crate::tls::upstream_config(None)?),
        };
        let connector = Connector { cfg: config.upstream.clone(), tls: upstream_tls };
        let pool = Pool::new(connector, config.upstream.pool_size, config.upstream.max_connections_per_tenant);
        let cancel = Registry::new(pool.upstream_addr());
        let inspector = Inspector::new(&config.tenant.setting);
        let backoff = LoginBackoff::new(config.listen.login_failures_before_backoff, config.listen.login_backoff_max);
        Ok(Shared {
            config,
            verifier,
            inspector,
            pool,
            cancel,
            tls,
            prepared: Default::default(),
            backoff,
            health: Health::default(),
            tenants: Arc::default(),
            phase: watch::Sender::new(Phase::Running),
        })
    }
}

/// Runs the proxy until SIGINT or SIGTERM, then drains.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let handle = crate::metrics::install()?;
    let shared = Arc::new(Shared::new(config)?);
    let listener = TcpListener::bind(shared.config.listen.addr)
        .await
        .with_context(|| format!("binding {}", shared.config.listen.addr))?;
    tokio::spawn(crate::http::bind(shared.clone(), handle.clone()).await?);
    tokio::spawn(upkeep(handle));
    tracing::info!(addr = %shared.config.listen.addr, "pgtenant listening");
    tokio::spawn(check_upstream(shared.clone()));
    tokio::spawn(crate::health::watch(shared.clone()));
    if let (Some(tls), interval) = (&shared.tls, shared.config.listen.tls_reload_interval) {
        if !interval.is_zero() {
            tokio::spawn(tls.clone().watch(interval));
        }
    }
    let limit = Arc::new(Semaphore::new(shared.config.listen.max_client_conn));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => accept(shared.clone(), &limit, tcp, peer),
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = int.recv() => break,
            _ = term.recv() => break,
        }
    }
    drop(listener);
    drain(&shared, &limit, &mut term, &mut int).await;
    Ok(())
}

/// Stops serving: `/ready` fails at once, idle clients get FATAL 57P01,
/// open transactions may finish within `listen.shutdown_timeout_seconds` (a
/// second signal cuts that short), then idle server connections are closed
/// with a Terminate.
async fn drain(shared: &Shared, limit: &Semaphore, term: &mut Signal, int: &mut Signal) {
    let max = shared.config.listen.max_client_conn;
    let open = |limit: &Semaphore| max - limit.available_permits();
    let timeout = shared.config.listen.shutdown_timeout;
    tracing::info!(clients = open(limit), timeout_s = timeout.as_secs(), "draining: no new connections");
    shared.health.start_draining();
    shared.phase.send_replace(Phase::Draining);
    let all_gone = async {
        while open(limit) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        _ = all_gone => {}
        _ = tokio::time::sleep(timeout) => {
            tracing::warn!(clients = open(limit), "shutdown timeout reached; closing the remaining clients");
        }
        _ = term.recv() => tracing::warn!("second signal; closing the remaining clients"),
        _ = int.recv() => tracing::warn!("second signal; closing the remaining clients"),
    }
    shared.phase.send_replace(Phase::Closing);
    let closing = async {
        while open(limit) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), closing).await;
    let closed = shared.pool.close_idle().await;
    tracing::info!(server_connections = closed, "shut down");
}

/// Drains the recorder's histogram buffers now and then, so memory stays
/// flat between scrapes.
async fn upkeep(handle: metrics_exporter_prometheus::PrometheusHandle) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        handle.run_upkeep();
    }
}

/// Connects once at startup so a bad upstream (unreachable, wrong password,
/// a role that bypasses RLS) is in the log before the first client comes.
async fn check_upstream(shared: Arc<Shared>) {
    match shared.pool.checkout(&crate::upstream::Owner::Proxy, shared.config.upstream.connect_timeout).await {
        Ok(pooled) => {
            tracing::info!(user = %shared.config.upstream.user, "upstream reachable; role checked");
            shared.pool.checkin(pooled);
        }
        Err(e) => tracing::error!(error = %e, "upstream check at startup failed; clients will get this error"),
    }
}

fn accept(shared: Arc<Shared>, limit: &Arc<Semaphore>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let permit = limit.clone().try_acquire_owned();
    tokio::spawn(async move {
        let Ok(_permit) = permit else {
            let mut tcp = tcp;
            crate::metrics::login_failed("too_many_clients");
            Fatal::new("53300", "sorry, too many clients already").send(&mut tcp).await;
            return;
        };
        handle(shared, tcp, peer).await;
    });
}

async fn handle(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr) {
    let timeout = shared.config.listen.startup_timeout;
    match tokio::time::timeout(timeout, login::handshake(tcp, peer, &shared)).await {
        Err(_) => {
            crate::metrics::login_failed("timeout");
            tracing::info!(%peer, "client did not finish startup in time; disconnected")
        }
        // A peer that leaves during startup (a port probe, a health check) is not worth a warning.
        Ok(Err(fatal)) if fatal.code == "08006" => {
            tracing::debug!(%peer, message = %fatal.message, "client left during startup")
        }
        Ok(Err(fatal)) => {
            crate::metrics::login_failed(failure_reason(&fatal));
            tracing::warn!(%peer, code = fatal.code, message = %fatal.message, "login refused")
        }
        Ok(Ok(Outcome::Done)) => {}
        Ok(Ok(Outcome::LoggedIn(logged))) => {
            crate::metrics::login_ok();
            client::run(shared, *logged, peer).await
        }
    }
}

/// A bounded label for a refused login, from its SQLSTATE and message.
fn failure_reason(fatal: &Fatal) -> &'static str {
    let says = |text: &str| fatal.message.contains(text);
    match fatal.code {
        "28P01" if says("expired") => "token_expired",
        "28P01" if says("signature") => "token_signature",
        "28P01" if says("issuer") || says("audience") => "token_issuer_audience",
        "28P01" if says("tenant") => "token_tenant_claim",
        "28P01" if says("algorithm") => "token_algorithm",
        "28P01" => "token_invalid",
        "28000" if says("TLS") => "tls_required",
        "28000" => "startup",
        "3D000" => "unknown_database",
        "42501" => "forbidden_parameter",
        "08P01" => "protocol",
        _ => "other",
    }
}
