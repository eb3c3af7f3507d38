//! rustls configurations: the proxy's listener certificate, the upstream
//! connector and the JWKS fetcher. One crypto provider (aws-lc-rs) is used everywhere, passed
//! explicitly so no process-wide default has to be installed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio_rustls::TlsAcceptor;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// TLS configuration for client connections, from PEM certificate chain and key files.
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing certificate {}", cert.display()))?;
    if certs.is_empty() {
        bail!("no certificate found in {}", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading private key {}", key.display()))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    Ok(Arc::new(config))
}

/// TLS configuration for upstream connections. With a CA file the server
/// certificate and host name are verified (`verify-full`); without one the
/// connection is encrypted but not authenticated, like libpq's `require`.
pub fn upstream_config(ca_file: Option<&Path>) -> anyhow::Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let config = match ca_file {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path).with_context(|| format!("reading {}", path.display()))? {
                roots.add(cert.with_context(|| format!("parsing {}", path.display()))?)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// TLS configuration for fetching a JWKS over HTTPS. The server is always
/// verified: against `ca_file` alone when given (a private CA), else against
/// the Mozilla roots compiled in by webpki-roots.
pub fn https_client_config(ca_file: Option<&Path>) -> anyhow::Result<Arc<ClientConfig>> {
    let roots = match ca_file {
        Some(path) => ca_roots(path)?,
        None => RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() },
    };
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // The fetcher speaks HTTP/1.1 only; say so, so a server never picks h2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Every certificate in a PEM file, as trust anchors; an empty file is an error.
fn ca_roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).with_context(|| format!("reading {}", path.display()))? {
        roots.add(cert.with_context(|| format!("parsing {}", path.display()))?)?;
    }
    if roots.is_empty() {
        bail!("no certificate found in {}", path.display());
    }
    Ok(roots)
}

/// The name to present and verify for an upstream host.
pub fn server_name(host: &str) -> anyhow::Result<ServerName<'static>> {
    ServerName::try_from(host.to_string()).with_context(|| format!("invalid upstream host name {host:?}"))
}

/// Accepts any server certificate but still checks handshake signatures, so the
/// session is encrypted; used for `tls = "prefer" | "require"`.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The client-facing TLS configuration, rebuilt when its PEM files change so
/// that renewed certificates (cert-manager, a rotated Kubernetes Secret) take
/// effect without a restart. Connections already open keep their session.
#[derive(Debug)]
pub struct ReloadingServerConfig {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<ServerConfig>,
    // The file contents last tried, good or bad, so a bad pair is reported once.
    seen: Mutex<(Vec<u8>, Vec<u8>)>,
}

/// What a reload check found.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    /// The files are unchanged since the last check.
    Unchanged,
    /// New files were loaded and are in use.
    Reloaded,
    /// The files changed but could not be used; the previous configuration stays.
    Rejected(String),
}

impl ReloadingServerConfig {
    /// Loads the certificate chain and key; fails if they cannot be used.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<ReloadingServerConfig> {
        let contents = read_pair(cert, key)?;
        let config = server_config(cert, key)?;
        Ok(ReloadingServerConfig {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: ArcSwap::new(config),
            seen: Mutex::new(contents),
        })
    }

    /// An acceptor for the configuration in use now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    /// Reloads the files if their contents changed since the last check.
    pub fn reload_if_changed(&self) -> Reload {
        let contents = match read_pair(&self.cert, &self.key) {
            Ok(c) => c,
            Err(e) => return self.reject_once(None, format!("{e:#}")),
        };
        if *self.seen.lock().expect("tls reload lock") == contents {
            return Reload::Unchanged;
        }
        match server_config(&self.cert, &self.key) {
            Ok(config) => {
                self.current.store(config);
                *self.seen.lock().expect("tls reload lock") = contents;
                Reload::Reloaded
            }
            Err(e) => self.reject_once(Some(contents), format!("{e:#}")),
        }
    }

    /// Checks the files every `interval` and logs what changed, forever.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            self.log(self.reload_if_changed());
        }
    }

    /// Logs the outcome of a reload check.
    pub fn log(&self, outcome: Reload) {
        match outcome {
            Reload::Unchanged => {}
            Reload::Reloaded => tracing::info!(cert = %self.cert.display(), "client TLS certificate reloaded"),
            Reload::Rejected(why) => tracing::error!(
                cert = %self.cert.display(),
                error = %why,
                "new client TLS certificate or key is unusable; still serving the previous one"
            ),
        }
    }

    fn reject_once(&self, contents: Option<(Vec<u8>, Vec<u8>)>, why: String) -> Reload {
        let mut seen = self.seen.lock().expect("tls reload lock");
        let contents = contents.unwrap_or_default();
        if *seen == contents {
            return Reload::Unchanged;
        }
        *seen = contents;
        Reload::Rejected(why)
    }
}

fn read_pair(cert: &Path, key: &Path) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let c = std::fs::read(cert).with_context(|| format!("reading certificate {}", cert.display()))?;
    let k = std::fs::read(key).with_context(|| format!("reading private key {}", key.display()))?;
    Ok((c, k))
}
