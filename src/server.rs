//! The accept loop: one task per client, bounded by `max_client_conn`, with
//! the startup phase under `startup_timeout`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;

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
    /// The validated configuration; SIGHUP swaps in a new one.
    config: ArcSwap<Config>,
    /// Where the configuration was loaded from, for reloads.
    config_path: Option<PathBuf>,
    /// Verifies client tokens; replaced on reload.
    pub verifier: ArcSwap<Verifier>,
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
    /// Client connections open now (bounded by `listen.max_client_conn`).
    pub clients: Arc<Clients>,
    /// Held while a SIGHUP reload runs, so two never interleave.
    reloading: tokio::sync::Mutex<()>,
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
    pub fn new(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<Shared> {
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
        Ok(Shared {
            config: ArcSwap::from_pointee(config),
            config_path,
            verifier: ArcSwap::from_pointee(verifier),
            inspector,
            pool,
            cancel,
            tls,
            prepared: Default::default(),
            backoff: LoginBackoff::default(),
            health: Health::default(),
            tenants: Arc::default(),
            phase: watch::Sender::new(Phase::Running),
            clients: Arc::default(),
            reloading: tokio::sync::Mutex::new(()),
        })
    }

    /// The configuration in force now.
    pub fn config(&self) -> arc_swap::Guard<Arc<Config>> {
        self.config.load()
    }

    /// Reloads the configuration file (SIGHUP): keys, TLS files, limits and
    /// pool size change without dropping a connection. A file that does not
    /// load, or changes a key that needs a restart, is refused and the
    /// running configuration stays.
    pub async fn reload(&self) -> Result<Vec<&'static str>, String> {
        let path = self.config_path.as_deref().ok_or("no configuration file to reload")?;
        let next = Config::load(path).map_err(|e| e.to_string())?;
        let current = self.config();
        let restart = crate::reload::needs_restart(&current, &next);
        if !restart.is_empty() {
            return Err(format!("these keys change only with a restart: {}", restart.join(", ")));
        }
        let changed = crate::reload::reloadable_changes(&current, &next);
        // Unchanged keys keep their verifier (and its loaded JWKS); new ones
        // must load before they replace the old, or logins would fail meanwhile.
        let verifier = match current.auth == next.auth {
            true => None,
            false => Some(ready_verifier(&next).await?),
        };
        if let Some(tls) = &self.tls {
            tls.log(tls.reload_if_changed());
        }
        if let Some(verifier) = verifier {
            self.verifier.store(verifier);
        }
        self.pool.resize(next.upstream.pool_size, next.upstream.max_connections_per_tenant);
        self.config.store(Arc::new(next));
        Ok(changed)
    }
}

async fn reload(shared: Arc<Shared>) {
    let _one_at_a_time = shared.reloading.lock().await;
    match shared.reload().await {
        Ok(changed) => {
            let kid = shared.config().tenant.mode.signing_key().map(|k| k.kid().to_string());
            tracing::info!(changed = ?changed, signing_key_id = kid.as_deref().unwrap_or("-"), "configuration reloaded")
        }
        Err(why) => tracing::error!(error = %why, "configuration NOT reloaded; the previous one stays in force"),
    }
}

/// Builds the verifier for a reloaded configuration and waits (10 s at most)
/// until its keys are usable.
async fn ready_verifier(next: &Config) -> Result<Arc<Verifier>, String> {
    let verifier = Arc::new(Verifier::new(&next.auth).map_err(|e| format!("auth: {e}"))?);
    verifier.spawn_key_refresh();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match verifier.keys_ready() {
            Ok(()) => return Ok(verifier),
            Err(why) if tokio::time::Instant::now() >= deadline => return Err(format!("auth: {why}")),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
}

/// Client connections open now; each accepted connection holds one [`Open`].
#[derive(Debug, Default)]
pub struct Clients(AtomicUsize);

/// One open client connection, counted until dropped.
struct Open(Arc<Clients>);

impl Clients {
    /// Counts a new connection in, unless `max` are already open.
    fn admit(self: &Arc<Self>, max: usize) -> Option<Open> {
        let admitted = self.0.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1));
        admitted.ok().map(|_| Open(self.clone()))
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs the proxy until SIGINT or SIGTERM, then drains. `config_path` is
/// re-read on SIGHUP.
pub async fn run(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let handle = crate::metrics::install()?;
    let shared = Arc::new(Shared::new(config, config_path)?);
    // A JWKS URL is first fetched here, in the background: an unreachable key
    // server must not keep the proxy from starting (logins fail closed meanwhile).
    shared.verifier.load().spawn_key_refresh();
    // The HTTP port first: once the client port accepts, everything is up.
    let http = crate::http::bind(shared.clone(), handle.clone()).await?;
    let addr = shared.config().listen.addr;
    let listener = TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    tokio::spawn(http);
    tokio::spawn(upkeep(handle));
    let kid = shared.config().tenant.mode.signing_key().map(|k| k.kid().to_string());
    let mode = if kid.is_some() { "signed" } else { "plain" };
    // The key id is public (it is in every proof); the key never is.
    tracing::info!(%addr, tenant_mode = mode, signing_key_id = kid.as_deref().unwrap_or("-"), "pgtenant listening");
    tokio::spawn(check_upstream(shared.clone()));
    tokio::spawn(crate::health::watch(shared.clone()));
    if let (Some(tls), interval) = (&shared.tls, shared.config().listen.tls_reload_interval) {
        if !interval.is_zero() {
            tokio::spawn(tls.clone().watch(interval));
        }
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => accept(shared.clone(), tcp, peer),
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            // In a task: loading new JWKS keys must not hold up accepting clients.
            _ = hup.recv() => {
                tokio::spawn(reload(shared.clone()));
            }
            _ = int.recv() => break,
            _ = term.recv() => break,
        }
    }
    drop(listener);
    drain(&shared, &mut term, &mut int).await;
    Ok(())
}

/// Stops serving: `/ready` fails at once, idle clients get FATAL 57P01,
/// open transactions may finish within `listen.shutdown_timeout_seconds` (a
/// second signal cuts that short), then idle server connections are closed
/// with a Terminate.
async fn drain(shared: &Shared, term: &mut Signal, int: &mut Signal) {
    let timeout = shared.config().listen.shutdown_timeout;
    let clients = &shared.clients;
    tracing::info!(clients = clients.open(), timeout_s = timeout.as_secs(), "draining: no new connections");
    shared.health.start_draining();
    shared.phase.send_replace(Phase::Draining);
    tokio::select! {
        _ = all_closed(clients) => {}
        _ = tokio::time::sleep(timeout) => {
            tracing::warn!(clients = clients.open(), "shutdown timeout reached; closing the remaining clients");
        }
        _ = term.recv() => tracing::warn!("second signal; closing the remaining clients"),
        _ = int.recv() => tracing::warn!("second signal; closing the remaining clients"),
    }
    shared.phase.send_replace(Phase::Closing);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), all_closed(clients)).await;
    let closed = shared.pool.close_idle().await;
    tracing::info!(server_connections = closed, "shut down");
}

async fn all_closed(clients: &Clients) {
    while clients.open() > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
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
    match shared.pool.checkout(&crate::upstream::Owner::Proxy, shared.config().upstream.connect_timeout).await {
        Ok(pooled) => {
            tracing::info!(user = %shared.config().upstream.user, "upstream reachable; role checked");
            shared.pool.checkin(pooled);
        }
        Err(e) => tracing::error!(error = %e, "upstream check at startup failed; clients will get this error"),
    }
}

fn accept(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let open = shared.clients.admit(shared.config().listen.max_client_conn);
    tokio::spawn(async move {
        let Some(_open) = open else {
            let mut tcp = tcp;
            crate::metrics::login_failed("too_many_clients");
            Fatal::new("53300", "sorry, too many clients already").send(&mut tcp).await;
            return;
        };
        handle(shared, tcp, peer).await;
    });
}

async fn handle(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr) {
    let timeout = shared.config().listen.startup_timeout;
    match tokio::time::timeout(timeout, login::handshake(tcp, peer, &shared)).await {
        Err(_) => {
            crate::metrics::login_failed("timeout");
            tracing::info!(%peer, "client did not finish startup in time; disconnected")
        }
        // A peer that leaves during startup (a port probe, a health check) is not worth a warning.
        Ok(Err(fatal)) if fatal.code == "08006" => {
            tracing::debug!(%peer, error = %fatal.message, "client left during startup")
        }
        Ok(Err(fatal)) => {
            crate::metrics::login_failed(failure_reason(&fatal));
            tracing::warn!(%peer, code = fatal.code, error = %fatal.message, "login refused")
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
