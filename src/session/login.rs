//! The startup phase: TLS negotiation, the StartupMessage checks, the JWT
//! sent as a cleartext password, and the greeting (parameters, cancel key).

use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::backoff;
use super::params::{self, Settings};
use super::Fatal;
use crate::auth::tenant::TenantId;
use crate::net::{ClientStream, MaybeTls};
use crate::server::Shared;
use crate::wire::startup::{self, PasswordError, Startup, StartupPacket};
use crate::wire::{build, frame};

/// Largest password message accepted: a 16 KiB token plus room for framing.
const MAX_PASSWORD_MESSAGE: usize = 16 * 1024 + 64;

/// A client that has logged in.
pub struct LoggedIn {
    /// The connection, TLS or not.
    pub stream: ClientStream,
    /// Bytes the client already sent after its password.
    pub rbuf: BytesMut,
    /// The tenant from its token.
    pub tenant: TenantId,
    /// The user name it gave (logged, never trusted).
    pub user: String,
    /// When its token expires (unix seconds).
    pub expires_at: u64,
    /// Session settings from its startup packet.
    pub settings: Settings,
}

/// How the startup phase ended.
pub enum Outcome {
    /// Authenticated; the session can start.
    LoggedIn(Box<LoggedIn>),
    /// A cancel request was handled, or the client left.
    Done,
}

/// Runs the startup phase on a new connection.
pub async fn handshake(tcp: TcpStream, peer: SocketAddr, shared: &Shared) -> Result<Outcome, Fatal> {
    let mut buf = BytesMut::with_capacity(1024);
    let (mut stream, startup) = match negotiate(tcp, &mut buf, shared).await? {
        Some(pair) => pair,
        None => return Ok(Outcome::Done),
    };
    match authenticate(&mut stream, &mut buf, &startup, peer, shared).await {
        Ok((tenant, user, expires_at, settings)) => {
            Ok(Outcome::LoggedIn(Box::new(LoggedIn { stream, rbuf: buf, tenant, user, expires_at, settings })))
        }
        Err(fatal) => {
            if fatal.code == "28P01" {
                slow_down(peer, shared).await;
            }
            fatal.send(&mut stream).await;
            Err(fatal)
        }
    }
}

/// Delays the answer to a failed login when its address keeps failing.
async fn slow_down(peer: SocketAddr, shared: &Shared) {
    let cfg = shared.config();
    let policy = backoff::Policy {
        threshold: cfg.listen.login_failures_before_backoff,
        max_delay: cfg.listen.login_backoff_max,
    };
    let delay = shared.backoff.failed(backoff::key(peer.ip()), std::time::Instant::now(), policy);
    if !delay.is_zero() {
        tracing::warn!(%peer, delay_ms = delay.as_millis() as u64, "repeated failed logins from this address; answering slowly");
        tokio::time::sleep(delay).await;
    }
}

/// What the unencrypted part of the startup phase ended with.
enum Plain {
    Startup(Startup),
    Tls,
    Cancelled,
}

/// Answers SSLRequest/GSSENCRequest until a StartupMessage arrives, upgrading
/// to TLS when asked and configured. Errors are reported to the client.
async fn negotiate(
    mut tcp: TcpStream,
    buf: &mut BytesMut,
    shared: &Shared,
) -> Result<Option<(ClientStream, Startup)>, Fatal> {
    let plain = match plain_phase(&mut tcp, buf, shared).await {
        Ok(p) => p,
        Err(fatal) => {
            fatal.send(&mut tcp).await;
            return Err(fatal);
        }
    };
    let acceptor = match plain {
        Plain::Startup(s) => return Ok(Some((MaybeTls::Plain(tcp), s))),
        Plain::Cancelled => return Ok(None),
        Plain::Tls => shared.tls.as_ref().expect("TLS is configured").acceptor(),
    };
    let tls = acceptor.accept(tcp).await.map_err(|e| Fatal::new("08P01", format!("TLS handshake failed: {e}")))?;
    let mut stream = MaybeTls::Tls(Box::new(tls));
    let result = match read_packet(&mut stream, buf).await {
        Ok(StartupPacket::Startup(s)) => return Ok(Some((stream, s))),
        Ok(StartupPacket::Cancel { pid, secret }) => {
            shared.cancel.cancel(pid, secret).await;
            return Ok(None);
        }
        Ok(_) => Fatal::new("08P01", "unexpected packet after TLS negotiation"),
        Err(fatal) => fatal,
    };
    result.send(&mut stream).await;
    Err(result)
}

async fn plain_phase(tcp: &mut TcpStream, buf: &mut BytesMut, shared: &Shared) -> Result<Plain, Fatal> {
    loop {
        match read_packet(tcp, buf).await? {
            StartupPacket::SslRequest if shared.tls.is_some() => {
                // Bytes sent before the handshake would be trusted as if they
                // came over TLS (CVE-2021-23214): refuse them.
                if !buf.is_empty() {
                    return Err(Fatal::new("08P01", "unexpected data after SSLRequest"));
                }
                write(tcp, b"S").await?;
                return Ok(Plain::Tls);
            }
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => write(tcp, b"N").await?,
            StartupPacket::Cancel { pid, secret } => {
                shared.cancel.cancel(pid, secret).await;
                return Ok(Plain::Cancelled);
            }
            StartupPacket::Startup(s) => return Ok(Plain::Startup(s)),
        }
    }
}

async fn write<W: AsyncWriteExt + Unpin>(w: &mut W, bytes: &[u8]) -> Result<(), Fatal> {
    w.write_all(bytes).await.map_err(|_| Fatal::new("08006", "client went away"))
}

async fn read_packet<R: AsyncReadExt + Unpin>(r: &mut R, buf: &mut BytesMut) -> Result<StartupPacket, Fatal> {
    loop {
        match startup::parse(buf) {
            Ok(Some((packet, used))) => {
                buf.advance(used);
                return Ok(packet);
            }
            Ok(None) => {}
            Err(e) => return Err(Fatal::new("08P01", e.to_string())),
        }
        if r.read_buf(buf).await.map_err(|_| Fatal::new("08006", "client went away"))? == 0 {
            return Err(Fatal::new("08006", "client closed the connection during startup"));
        }
    }
}

/// Checks the StartupMessage, asks for the token and verifies it.
async fn authenticate(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    startup: &Startup,
    peer: SocketAddr,
    shared: &Shared,
) -> Result<(TenantId, String, u64, Settings), Fatal> {
    if startup.minor > 0 || !startup.protocol_options.is_empty() {
        let mut out = BytesMut::new();
        build::negotiate_protocol_version(&mut out, &startup.protocol_options);
        write(stream, &out).await?;
    }
    let user = check_startup(startup, shared)?;
    let settings = startup_settings(startup)?;
    if !stream.is_tls() && !peer.ip().to_canonical().is_loopback() && !shared.config().listen.allow_plaintext_auth {
        return Err(Fatal::new("28000", "pgtenant requires TLS for clients that are not on loopback")
            .hint("connect with sslmode=require (or set listen.allow_plaintext_auth = true on a trusted network)"));
    }
    let mut out = BytesMut::new();
    build::authentication(&mut out, 3);
    write(stream, &out).await?;
    let token = read_password(stream, buf).await?;
    let verified = shared.verifier.load_full().verify_with_refresh(&token).await.map_err(|e| {
        Fatal::new("28P01", format!("authentication failed: {e}"))
            .hint("the password must be a valid JWT for this proxy")
    })?;
    Ok((verified.tenant, user, verified.expires_at, settings))
}

/// The session settings a client asked for at startup; they follow it to
/// every server connection. Encodings whose multibyte characters can hide a
/// quote from the proxy's lexer are refused, as `SET client_encoding` is.
fn startup_settings(startup: &Startup) -> Result<Settings, Fatal> {
    let settings = params::from_startup(&startup.params).map_err(|e| Fatal::new("08P01", e))?;
    if let Some(enc) = settings.get("client_encoding") {
        if crate::sql::inspect::is_unsafe_encoding(enc.as_bytes()) {
            return Err(Fatal::new("42501", format!("client_encoding \"{enc}\" is not supported by pgtenant"))
                .hint("use UTF8 (or another ASCII-safe encoding)"));
        }
    }
    Ok(settings)
}

/// Validates the StartupMessage parameters; returns the user name.
fn check_startup(startup: &Startup, shared: &Shared) -> Result<String, Fatal> {
    let user = startup
        .get("user")
        .filter(|u| !u.is_empty())
        .ok_or_else(|| Fatal::new("28000", "no user name specified in startup packet"))?;
    let expected = &shared.config().upstream.database;
    let database = startup.get("database").filter(|d| !d.is_empty()).unwrap_or(user);
    if database != expected {
        return Err(Fatal::new("3D000", format!("database \"{database}\" does not exist"))
            .hint(format!("pgtenant serves database \"{expected}\"")));
    }
    if startup.get("replication").is_some_and(|v| v != "false" && v != "0" && v != "off" && v != "no") {
        return Err(Fatal::new("08P01", "replication connections are not supported by pgtenant"));
    }
    let setting = &shared.config().tenant.setting;
    for (name, value) in &startup.params {
        let named = name.eq_ignore_ascii_case(setting);
        let in_options = name == "options" && normalize_options(value).contains(setting.as_str());
        if named || in_options {
            return Err(Fatal::new("42501", format!("setting \"{setting}\" at connection start is not allowed"))
                .hint("the tenant comes from your token"));
        }
        if name.eq_ignore_ascii_case("standard_conforming_strings") && !value.eq_ignore_ascii_case("on") {
            return Err(Fatal::new("42501", "pgtenant requires standard_conforming_strings = on"));
        }
    }
    Ok(user.to_string())
}

/// PostgreSQL unescapes backslashes in `options` and turns dashes into
/// underscores in `--name=value`; normalise the same way before looking for
/// the setting, so no spelling slips through.
fn normalize_options(value: &str) -> String {
    value.to_ascii_lowercase().replace('\\', "").replace('-', "_")
}

async fn read_password(stream: &mut ClientStream, buf: &mut BytesMut) -> Result<String, Fatal> {
    loop {
        let header = frame::complete_header(buf, MAX_PASSWORD_MESSAGE)
            .map_err(|_| Fatal::new("28P01", "authentication failed: token is too large"))?;
        if let Some(h) = header {
            if h.tag != b'p' {
                return Err(Fatal::new("08P01", format!("expected a password message, got {:?}", h.tag as char)));
            }
            let msg = buf.split_to(h.total);
            return match startup::password(&msg[frame::HEADER_LEN..]) {
                Ok(token) => Ok(token.to_owned()),
                Err(PasswordError::Malformed) => Err(Fatal::new("08P01", "malformed password message")),
                Err(PasswordError::NotUtf8) => Err(Fatal::new("28P01", "authentication failed: token is malformed")),
            };
        }
        if stream.read_buf(buf).await.map_err(|_| Fatal::new("08006", "client went away"))? == 0 {
            return Err(Fatal::new("08006", "client closed the connection during authentication"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_options;

    #[test]
    fn options_spellings_are_normalised() {
        for raw in ["-c app.current_tenant_id=x", "-c APP.current\\_tenant_id=x", "--app.current-tenant-id=x"] {
            assert!(normalize_options(raw).contains("app.current_tenant_id"), "{raw}");
        }
        assert!(!normalize_options("-c search_path=x").contains("app.current_tenant_id"));
    }
}
