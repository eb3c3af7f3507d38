//! Connecting `doctor`, `policy` and the probe to a database URL.
//!
//! The URL is a libpq-style `postgres://user:password@host:port/db?...` (or `key=value`
//! string) as tokio-postgres parses it, with `sslmode` and `sslrootcert` handled here:
//! `disable`, `prefer` (the default: TLS when the server offers it, unverified), `require`
//! (TLS, unverified) and `verify-full` (TLS, certificate and host name checked against
//! `sslrootcert=PATH`, or the Mozilla roots with `sslrootcert=system`). `allow` and `verify-ca`
//! are refused. A URL without a password takes `PGPASSWORD` from the environment.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config};

use super::client_tls::MakeRustls;
use super::AuditError;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS part of a database URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// `sslmode=disable`: plaintext.
    Disable,
    /// `sslmode=prefer` (default): TLS when offered, certificate not verified.
    Prefer,
    /// `sslmode=require`: TLS, certificate not verified.
    Require,
    /// `sslmode=verify-full`: TLS, certificate verified against these roots (`None` = system).
    VerifyFull(Option<PathBuf>),
}

/// A parsed database URL: the tokio-postgres config and the TLS mode.
#[derive(Debug, Clone)]
pub struct Target {
    /// Everything but TLS.
    pub config: Config,
    /// The TLS mode.
    pub tls: Tls,
}

impl Target {
    /// Parses `url`, taking `sslmode` and `sslrootcert` out of it.
    pub fn parse(url: &str) -> Result<Target, AuditError> {
        let (rest, sslmode, rootcert) = split_tls_params(url);
        let tls = tls_mode(sslmode.as_deref(), rootcert)?;
        let mut config =
            Config::from_str(&rest).map_err(|e| AuditError::Usage(format!("invalid database URL: {e}")))?;
        if config.get_password().is_none() {
            if let Ok(password) = std::env::var("PGPASSWORD") {
                config.password(password);
            }
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("pgtenant-doctor");
        Ok(Target { config, tls })
    }

    /// The database name, as given or defaulted (the user name, as in libpq).
    pub fn dbname(&self) -> String {
        self.config.get_dbname().or(self.config.get_user()).unwrap_or("postgres").to_string()
    }

    /// Connects, with `password` replacing the URL's when given (the probe's tokens).
    pub async fn connect(&self, password: Option<&str>) -> Result<Client, AuditError> {
        let mut config = self.config.clone();
        if let Some(password) = password {
            config.password(password);
        }
        let mode = match self.tls {
            Tls::Disable => SslMode::Disable,
            Tls::Prefer => SslMode::Prefer,
            Tls::Require | Tls::VerifyFull(_) => SslMode::Require,
        };
        config.ssl_mode(mode);
        let tls = MakeRustls::new(self.rustls_config()?);
        let (client, connection) =
            config.connect(tls).await.map_err(|e| AuditError::Connect(super::describe_error(&e)))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    fn rustls_config(&self) -> Result<Arc<ClientConfig>, AuditError> {
        let tls_error = |e: anyhow::Error| AuditError::Usage(format!("sslrootcert: {e:#}"));
        match &self.tls {
            Tls::VerifyFull(Some(path)) => crate::tls::upstream_config(Some(path)).map_err(tls_error),
            Tls::VerifyFull(None) => crate::tls::https_client_config(None).map(without_alpn).map_err(tls_error),
            _ => crate::tls::upstream_config(None).map_err(tls_error),
        }
    }
}

/// The Mozilla-roots config without the HTTP ALPN the JWKS fetcher sets.
fn without_alpn(config: Arc<ClientConfig>) -> Arc<ClientConfig> {
    let mut config = (*config).clone();
    config.alpn_protocols.clear();
    Arc::new(config)
}

/// The TLS mode for an `sslmode` value and an optional `sslrootcert`.
fn tls_mode(sslmode: Option<&str>, rootcert: Option<String>) -> Result<Tls, AuditError> {
    match sslmode.unwrap_or("prefer") {
        "disable" => Ok(Tls::Disable),
        "prefer" => Ok(Tls::Prefer),
        "require" => Ok(Tls::Require),
        "verify-full" => match rootcert.as_deref() {
            Some("system") => Ok(Tls::VerifyFull(None)),
            Some(path) => Ok(Tls::VerifyFull(Some(PathBuf::from(path)))),
            None => Err(AuditError::Usage(
                "sslmode=verify-full needs sslrootcert=PATH (a PEM CA file) or sslrootcert=system".into(),
            )),
        },
        other => Err(AuditError::Usage(format!(
            "sslmode={other} is not supported: use disable, prefer, require or verify-full"
        ))),
    }
}

/// Removes `sslmode` and `sslrootcert` from a URL's query string or a `key=value` string:
/// (the rest, sslmode, sslrootcert).
fn split_tls_params(url: &str) -> (String, Option<String>, Option<String>) {
    let (mut sslmode, mut rootcert) = (None, None);
    let mut take = |key: &str, value: &str| match key {
        "sslmode" => sslmode = Some(percent_decode(value)),
        "sslrootcert" => rootcert = Some(percent_decode(value)),
        _ => {}
    };
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let rest = if is_url {
        match url.split_once('?') {
            Some((base, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|pair| {
                        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                        take(k, v);
                        !matches!(k, "sslmode" | "sslrootcert")
                    })
                    .collect();
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => url.to_string(),
        }
    } else {
        let kept: Vec<&str> = url
            .split_whitespace()
            .filter(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                take(k.trim(), v.trim());
                !matches!(k.trim(), "sslmode" | "sslrootcert")
            })
            .collect();
        kept.join(" ")
    };
    (rest, sslmode, rootcert)
}

/// Decodes `%XX` escapes (invalid ones are kept as they are).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_params_are_taken_out_of_urls() {
        let (rest, mode, root) =
            split_tls_params("postgres://u:p@h:5/db?sslmode=verify-full&application_name=x&sslrootcert=%2Fca.pem");
        assert_eq!(rest, "postgres://u:p@h:5/db?application_name=x");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/ca.pem"));
        let (rest, mode, _) = split_tls_params("postgresql://h/db?sslmode=disable");
        assert_eq!((rest.as_str(), mode.as_deref()), ("postgresql://h/db", Some("disable")));
        let (rest, mode, _) = split_tls_params("host=h dbname=app sslmode=require");
        assert_eq!((rest.as_str(), mode.as_deref()), ("host=h dbname=app", Some("require")));
    }

    #[test]
    fn sslmodes() {
        assert_eq!(tls_mode(None, None).unwrap(), Tls::Prefer);
        assert_eq!(tls_mode(Some("require"), None).unwrap(), Tls::Require);
        assert_eq!(tls_mode(Some("verify-full"), Some("system".into())).unwrap(), Tls::VerifyFull(None));
        assert!(matches!(tls_mode(Some("verify-full"), None), Err(AuditError::Usage(_))));
        assert!(matches!(tls_mode(Some("verify-ca"), None), Err(AuditError::Usage(_))));
        assert!(matches!(tls_mode(Some("allow"), None), Err(AuditError::Usage(_))));
    }

    #[test]
    fn targets_parse_and_default_the_database() {
        let t = Target::parse("postgres://me@127.0.0.1:5432/app?sslmode=disable").unwrap();
        assert_eq!((t.dbname(), t.tls), ("app".to_string(), Tls::Disable));
        assert!(matches!(Target::parse("postgres://h/db?nonsense=1"), Err(AuditError::Usage(_))));
    }
}
