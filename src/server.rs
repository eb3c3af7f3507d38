//! The accept loop: one task per client, bounded by `max_client_conn`, with
//! the startup phase under `startup_timeout`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::auth::jwt::Verifier;
use crate::cancel::Registry;
use crate::config::{Config, UpstreamTls};
use crate::session::login::{self, Outcome};
use crate::session::{client, Fatal};
use crate::sql::inspect::Inspector;
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
    pub tls: Option<TlsAcceptor>,
    /// Server-side names of prepared statements.
    pub prepared: crate::session::prepared::Registry,
}

impl Shared {
    /// Builds the shared state, loading keys and certificates.
    pub fn new(config: Config) -> anyhow::Result<Shared> {
        let verifier = Verifier::new(&config.auth).context("loading the JWT verification key")?;
        let tls = match &config.listen.tls {
            Some(files) => Some(TlsAcceptor::from(crate::tls::server_config(&files.cert, &files.key)?)),
            None => None,
        };
        let upstream_tls = match config.upstream.tls {
            UpstreamTls::Disable => None,
            UpstreamTls::VerifyFull => Some(crate::tls::upstream_config(config.upstream.tls_ca_file.as_deref())?),
            UpstreamTls::Prefer | UpstreamTls::Require => Some(crate::tls::upstream_config(None)?),
        };
        let connector = Connector { cfg: config.upstream.clone(), tls: upstream_tls };
        let pool = Pool::new(connector, config.upstream.pool_size);
        let cancel = Registry::new(pool.upstream_addr());
        let inspector = Inspector::new(&config.tenant.setting);
        Ok(Shared { config, verifier, inspector, pool, cancel, tls, prepared: Default::default() })
    }
}

/// Runs the proxy until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let shared = Arc::new(Shared::new(config)?);
    // A JWKS URL is first fetched here, in the background: an unreachable key
    // server must not keep the proxy from starting (logins fail closed meanwhile).
    shared.verifier.spawn_key_refresh();
    let listener = TcpListener::bind(shared.config.listen.addr)
        .await
        .with_context(|| format!("binding {}", shared.config.listen.addr))?;
    tracing::info!(addr = %shared.config.listen.addr, "pgtenant listening");
    tokio::spawn(check_upstream(shared.clone()));
    let limit = Arc::new(Semaphore::new(shared.config.listen.max_client_conn));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
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
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    tracing::info!("shutting down");
    Ok(())
}

/// Connects once at startup so a bad upstream (unreachable, wrong password,
/// a role that bypasses RLS) is in the log before the first client comes.
async fn check_upstream(shared: Arc<Shared>) {
    match shared.pool.checkout(shared.config.upstream.connect_timeout).await {
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
            Fatal::new("53300", "sorry, too many clients already").send(&mut tcp).await;
            return;
        };
        handle(shared, tcp, peer).await;
    });
}

async fn handle(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr) {
    let timeout = shared.config.listen.startup_timeout;
    match tokio::time::timeout(timeout, login::handshake(tcp, peer, &shared)).await {
        Err(_) => tracing::info!(%peer, "client did not finish startup in time; disconnected"),
        // A peer that leaves during startup (a port probe, a health check) is not worth a warning.
        Ok(Err(fatal)) if fatal.code == "08006" => {
            tracing::debug!(%peer, message = %fatal.message, "client left during startup")
        }
        Ok(Err(fatal)) => tracing::warn!(%peer, code = fatal.code, message = %fatal.message, "login refused"),
        Ok(Ok(Outcome::Done)) => {}
        Ok(Ok(Outcome::LoggedIn(logged))) => client::run(shared, *logged, peer).await,
    }
}
