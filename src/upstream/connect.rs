//! Opening one server connection: TCP, optional TLS, startup and login with
//! SCRAM-SHA-256, md5, cleartext or trust.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::config::{ChannelBindingMode, UpstreamConfig, UpstreamTls};
use crate::net::{MaybeTls, ServerStream};
use crate::wire::{error, frame};

/// Largest message accepted from PostgreSQL (its own limit is 1 GB).
pub const MAX_SERVER_MESSAGE: usize = 1 << 30;

/// Why a server connection could not be opened.
#[derive(Debug, Error)]
pub enum UpstreamError {
    /// Network failure.
    #[error("upstream I/O error: {0}")]
    Io(#[from] io::Error),
    /// The connect timeout expired.
    #[error("timed out connecting to upstream")]
    Timeout,
    /// TLS was required but the server does not offer it, or the handshake failed.
    #[error("upstream TLS: {0}")]
    Tls(String),
    /// The server refused the login or sent an error.
    #[error("upstream refused the connection: {0}")]
    Refused(String),
    /// The server sent something this client cannot follow.
    #[error("upstream protocol error: {0}")]
    Protocol(String),
    /// `upstream.user` can bypass row-level security.
    #[error("{0}")]
    UnsafeRole(String),
}

/// What the upstream connector needs besides the config: prepared TLS settings.
pub struct Connector {
    /// Upstream settings.
    pub cfg: UpstreamConfig,
    /// rustls client configuration when TLS may be used.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// One logged-in server connection.
pub struct ServerConn {
    /// The socket.
    pub stream: ServerStream,
    /// Bytes read from the server and not yet consumed.
    pub rbuf: BytesMut,
    /// The backend's cancel key (process id, secret).
    pub key: (i32, i32),
    /// ParameterStatus values reported at login.
    pub params: Vec<(String, String)>,
    /// When the connection was opened.
    pub created: Instant,
    /// Ids of the proxy-named statements prepared on this connection.
    pub prepared: PreparedCache,
    /// Session settings known to differ from the defaults, by lowercase name.
    pub settings: BTreeMap<String, String>,
    /// Which client used the connection last (an opaque id; 0 for none).
    pub last_client: u64,
    /// How it logged in (`SCRAM-SHA-256-PLUS`, `md5`, ...), for the log.
    pub method: &'static str,
}

/// The proxy-named statements prepared on one server connection, with
/// their last use, so the least recently used can be closed at a bound.
#[derive(Debug, Default)]
pub struct PreparedCache {
    last_use: HashMap<u64, u64>,
    tick: u64,
}

impl PreparedCache {
    /// Marks `id` as prepared and just used; returns whether it is new.
    pub fn insert(&mut self, id: u64) -> bool {
        self.tick += 1;
        self.last_use.insert(id, self.tick).is_none()
    }

    /// Whether `id` is prepared.
    pub fn contains(&self, id: u64) -> bool {
        self.last_use.contains_key(&id)
    }

    /// Forgets `id` (its Parse failed, or it was closed).
    pub fn remove(&mut self, id: &u64) {
        self.last_use.remove(id);
    }

    /// Forgets everything (`DISCARD ALL`).
    pub fn clear(&mut self) {
        self.last_use.clear();
    }

    /// Number of statements prepared.
    pub fn len(&self) -> usize {
        self.last_use.len()
    }

    /// Whether none is prepared.
    pub fn is_empty(&self) -> bool {
        self.last_use.is_empty()
    }

    /// When more than `cap` are prepared, removes and returns the least
    /// recently used one not in `keep`.
    pub fn evict_over(&mut self, cap: usize, keep: &[u64]) -> Option<u64> {
        if self.last_use.len() <= cap {
            return None;
        }
        let (&id, _) = self.last_use.iter().filter(|(id, _)| !keep.contains(id)).min_by_key(|(_, t)| **t)?;
        self.last_use.remove(&id);
        Some(id)
    }
}

/// What a query run by the proxy itself returned.
#[derive(Debug, Default)]
pub struct QueryOutcome {
    /// ParameterStatus values reported while it ran.
    pub reported: Vec<(String, String)>,
    /// The first row, as text values.
    pub first_row: Option<Vec<Option<String>>>,
}

/// An error a server reported for a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// SQLSTATE.
    pub code: String,
    /// Message.
    pub message: String,
}

impl Connector {
    /// Opens and logs in one server connection within the connect timeout.
    pub async fn connect(&self) -> Result<ServerConn, UpstreamError> {
        tokio::time::timeout(self.cfg.connect_timeout, self.connect_inner())
            .await
            .map_err(|_| UpstreamError::Timeout)?
    }

    async fn open(&self) -> Result<ServerConn, UpstreamError> {
        let tcp = TcpStream::connect((self.cfg.host.as_str(), self.cfg.port)).await?;
        tcp.set_nodelay(true)?;
        let stream = self.negotiate_tls(tcp).await?;
        let mut conn = ServerConn {
            stream,
            rbuf: BytesMut::with_capacity(8192),
            key: (0, 0),
            params: Vec::new(),
            created: Instant::now(),
            prepared: PreparedCache::default(),
            settings: BTreeMap::new(),
            last_client: 0,
            method: "",
        };
        conn.method = conn.login(&self.cfg).await?;
        Ok(conn)
    }

    async fn connect_inner(&self) -> Result<ServerConn, UpstreamError> {
        let mut conn = self.open().await?;
        super::role::check(&mut conn, &self.cfg).await?;
        tracing::info!(
            upstream_pid = conn.key.0,
            tls = conn.stream.is_tls(),
            auth = conn.method,
            "server connection opened"
        );
        Ok(conn)
    }

    async fn negotiate_tls(&self, mut tcp: TcpStream) -> Result<ServerStream, UpstreamError> {
        let Some(tls) = self.tls.as_ref().filter(|_| self.cfg.tls != UpstreamTls::Disable) else {
            return Ok(MaybeTls::Plain(tcp));
        };
        tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?;
        let answer = tcp.read_u8().await?;
        if answer != b'S' {
            if self.cfg.tls == UpstreamTls::Prefer {
                return Ok(MaybeTls::Plain(tcp));
            }
            return Err(UpstreamError::Tls("server does not support TLS".into()));
        }
        let name = crate::tls::server_name(&self.cfg.host).map_err(|e| UpstreamError::Tls(e.to_string()))?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| UpstreamError::Tls(e.to_string()))?;
        Ok(MaybeTls::Tls(Box::new(stream)))
    }
}

impl ServerConn {
    /// Reads one whole message, returning its tag and body.
    pub async fn read_message(&mut self) -> Result<(u8, Bytes), UpstreamError> {
        loop {
            let header = frame::complete_header(&self.rbuf, MAX_SERVER_MESSAGE)
                .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
            if let Some(h) = header {
                let mut msg = self.rbuf.split_to(h.total);
                msg.advance(frame::HEADER_LEN);
                return Ok((h.tag, msg.freeze()));
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(UpstreamError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Writes all of `buf` to the server.
    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.stream.write_all(buf).await
    }

    /// Says goodbye (Terminate) and closes the socket, so the server logs a
    /// clean disconnect instead of an unexpected EOF.
    pub async fn terminate(mut self) {
        let mut out = BytesMut::new();
        crate::wire::build::terminate(&mut out);
        let _ = self.write_all(&out).await;
        let _ = self.stream.shutdown().await;
    }

    /// Runs one simple Query to completion on an idle connection; returns
    /// what it reported, or the server's error.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Result<QueryOutcome, ServerError>, UpstreamError> {
        let mut out = BytesMut::new();
        crate::wire::build::query(&mut out, sql.as_bytes());
        self.write_all(&out).await?;
        let mut outcome = QueryOutcome::default();
        let mut failure = None;
        loop {
            let (tag, body) = self.read_message().await?;
            match tag {
                b'S' => outcome.reported.push(parse_parameter(&body)?),
                b'D' if outcome.first_row.is_none() => outcome.first_row = crate::wire::row::parse_data_row(&body),
                b'E' if failure.is_none() => failure = Some(server_error(&body)),
                b'Z' => return Ok(failure.map_or(Ok(outcome), Err)),
                _ => {}
            }
        }
    }

    /// Runs statements with text parameters through the extended protocol
    /// (unnamed statement and portal, one Sync at the end, so they share one
    /// transaction) on an idle connection; returns each statement's first
    /// row, or the first error.
    pub async fn extended_query(
        &mut self,
        statements: &[(&[u8], &[&[u8]])],
    ) -> Result<Result<Vec<Option<Vec<Option<String>>>>, ServerError>, UpstreamError> {
        let mut out = BytesMut::new();
        for (sql, params) in statements {
            crate::wire::build::parse_unnamed(&mut out, sql);
            crate::wire::build::bind(&mut out, b"", b"", params);
            crate::wire::build::execute_unnamed(&mut out);
        }
        crate::wire::build::sync(&mut out);
        self.write_all(&out).await?;
        let mut rows: Vec<Option<Vec<Option<String>>>> = vec![None; statements.len()];
        let (mut current, mut failure) = (0, None);
        loop {
            let (tag, body) = self.read_message().await?;
            match tag {
                b'D' if current < rows.len() && rows[current].is_none() => {
                    rows[current] = crate::wire::row::parse_data_row(&body);
                }
                b'C' => current += 1,
                b'E' if failure.is_none() => failure = Some(server_error(&body)),
                b'Z' => return Ok(failure.map_or(Ok(rows), Err)),
                _ => {}
            }
        }
    }

    /// True when an idle connection has something to say (an error before
    /// closing, or EOF): PostgreSQL never speaks unprompted to an idle client
    /// except to end the session, so such a connection must not be reused.
    pub fn is_broken(&mut self) -> bool {
        if !self.rbuf.is_empty() {
            return true;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        !matches!(std::pin::Pin::new(&mut self.stream).poll_read(&mut cx, &mut buf), Poll::Pending)
    }

    /// Logs in; returns the authentication method used, for the log.
    async fn login(&mut self, cfg: &UpstreamConfig) -> Result<&'static str, UpstreamError> {
        let mut out = BytesMut::new();
        let params = [("user", cfg.user.as_str()), ("database", cfg.database.as_str())];
        frontend::startup_message(params, &mut out)?;
        self.write_all(&out).await?;
        let method = self.authenticate(cfg).await?;
        loop {
            let (tag, body) = self.read_message().await?;
            match tag {
                b'S' => self.params.push(parse_parameter(&body)?),
                b'K' if body.len() == 8 => {
                    self.key = ((&body[..4]).get_i32(), (&body[4..]).get_i32());
                }
                b'Z' => return Ok(method),
                b'N' => {}
                b'E' => return Err(UpstreamError::Refused(error_text(&body))),
                other => return Err(unexpected(other)),
            }
        }
    }

    async fn authenticate(&mut self, cfg: &UpstreamConfig) -> Result<&'static str, UpstreamError> {
        let password = cfg.password.as_deref().unwrap_or("");
        let mut used = "trust";
        loop {
            let (tag, body) = self.read_message().await?;
            match tag {
                b'R' => {}
                b'E' => return Err(UpstreamError::Refused(error_text(&body))),
                b'v' | b'N' => continue,
                other => return Err(unexpected(other)),
            }
            let mut body = body;
            if body.len() < 4 {
                return Err(UpstreamError::Protocol("short authentication message".into()));
            }
            let mut out = BytesMut::new();
            let method = body.get_i32();
            if cfg.channel_binding == ChannelBindingMode::Require && method != 10 {
                return Err(UpstreamError::Refused(format!(
                    "upstream.channel_binding = \"require\", but the server asked for {} instead of SCRAM",
                    method_name(method)
                )));
            }
            match method {
                0 => return Ok(used),
                3 => {
                    used = "password";
                    frontend::password_message(password.as_bytes(), &mut out)?
                }
                5 if body.len() == 4 => {
                    let salt = [body[0], body[1], body[2], body[3]];
                    let hash =
                        postgres_protocol::authentication::md5_hash(cfg.user.as_bytes(), password.as_bytes(), salt);
                    frontend::password_message(hash.as_bytes(), &mut out)?;
                    used = "md5";
                }
                10 => return self.scram(password, &body, cfg.channel_binding).await,
                code => return Err(UpstreamError::Refused(format!("unsupported authentication method {code}"))),
            }
            self.write_all(&out).await?;
        }
    }

    async fn scram(
        &mut self,
        password: &str,
        mechanisms: &[u8],
        mode: ChannelBindingMode,
    ) -> Result<&'static str, UpstreamError> {
        let offered = |name: &[u8]| mechanisms.split(|&b| b == 0).any(|m| m == name);
        let binding = match mode {
            ChannelBindingMode::Disable => None,
            _ if !offered(b"SCRAM-SHA-256-PLUS") => None,
            _ => self.server_end_point(),
        };
        let (mechanism, binding) = match binding {
            Some(data) => ("SCRAM-SHA-256-PLUS", ChannelBinding::tls_server_end_point(data)),
            None if mode == ChannelBindingMode::Require => {
                let why = match self.stream.is_tls() {
                    true => "the server offers no SCRAM-SHA-256-PLUS for its certificate",
                    false => "the connection does not use TLS",
                };
                return Err(UpstreamError::Refused(format!("upstream.channel_binding = \"require\", but {why}")));
            }
            // `unsupported` (not `unrequested`): PostgreSQL rejects the
            // latter over TLS as a possible downgrade.
            None if offered(b"SCRAM-SHA-256") => ("SCRAM-SHA-256", ChannelBinding::unsupported()),
            None => return Err(UpstreamError::Refused("server offers no SCRAM-SHA-256".into())),
        };
        let mut scram = ScramSha256::new(password.as_bytes(), binding);
        let mut out = BytesMut::new();
        frontend::sasl_initial_response(mechanism, scram.message(), &mut out)?;
        self.write_all(&out).await?;
        let server_first = self.expect_auth(11).await?;
        scram.update(&server_first)?;
        out.clear();
        frontend::sasl_response(scram.message(), &mut out)?;
        self.write_all(&out).await?;
        let server_final = self.expect_auth(12).await?;
        scram.finish(&server_final)?;
        self.expect_auth(0).await.map(|_| mechanism)
    }

    /// Channel binding data for the server's TLS certificate, if any.
    fn server_end_point(&self) -> Option<Vec<u8>> {
        let MaybeTls::Tls(tls) = &self.stream else { return None };
        let cert = tls.get_ref().1.peer_certificates()?.first()?;
        super::binding::tls_server_end_point(cert)
    }

    async fn expect_auth(&mut self, code: i32) -> Result<Bytes, UpstreamError> {
        let (tag, mut body) = self.read_message().await?;
        match tag {
            b'R' if body.len() >= 4 && body.get_i32() == code => Ok(body),
            b'E' => Err(UpstreamError::Refused(error_text(&body))),
            _ => Err(UpstreamError::Protocol(format!("expected authentication step {code}"))),
        }
    }
}

fn method_name(code: i32) -> String {
    match code {
        0 => "no authentication (trust)".into(),
        3 => "a cleartext password".into(),
        5 => "an md5 password".into(),
        other => format!("authentication method {other}"),
    }
}

fn parse_parameter(body: &[u8]) -> Result<(String, String), UpstreamError> {
    let bad = || UpstreamError::Protocol("malformed ParameterStatus".into());
    let (name, rest) = frame::cstr(body).ok_or_else(bad)?;
    let (value, _) = frame::cstr(rest).ok_or_else(bad)?;
    Ok((String::from_utf8_lossy(name).into_owned(), String::from_utf8_lossy(value).into_owned()))
}

/// The SQLSTATE and message of an ErrorResponse body.
fn server_error(body: &[u8]) -> ServerError {
    let fields = error::fields(body).unwrap_or_default();
    let get = |k| String::from_utf8_lossy(error::field(&fields, k).unwrap_or(b"")).into_owned();
    ServerError { code: get(b'C'), message: get(b'M') }
}

/// The message and SQLSTATE of an ErrorResponse body, for logs.
pub fn error_text(body: &[u8]) -> String {
    let Some(fields) = error::fields(body) else { return "malformed error".into() };
    let get = |k| String::from_utf8_lossy(error::field(&fields, k).unwrap_or(b"")).into_owned();
    format!("{} ({})", get(b'M'), get(b'C'))
}

fn unexpected(tag: u8) -> UpstreamError {
    UpstreamError::Protocol(format!("unexpected message {:?} during login", tag as char))
}

#[cfg(test)]
mod tests {
    use super::PreparedCache;

    #[test]
    fn evicts_the_least_recently_used_outside_keep() {
        let mut c = PreparedCache::default();
        for id in [1, 2, 3] {
            assert!(c.insert(id));
        }
        assert!(!c.insert(1));
        assert_eq!(c.evict_over(3, &[]), None);
        assert!(c.insert(4));
        assert_eq!(c.evict_over(3, &[2]), Some(3));
        assert_eq!(c.len(), 3);
        assert_eq!(c.evict_over(3, &[]), None);
    }
}
