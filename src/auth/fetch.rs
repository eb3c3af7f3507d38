//! A deliberately small HTTPS client for fetching a JWKS document.
//!
//! One `GET` over HTTP/1.1 with `Connection: close`: no redirects (a 3xx is an
//! error naming the status, so a compromised or misconfigured server cannot
//! send the proxy elsewhere), no compression, a cap on the body enforced while
//! reading, and separate connect and read timeouts. Bodies framed by
//! `Content-Length`, `Transfer-Encoding: chunked` or the end of the connection
//! are understood. A full HTTP client would bring far more surface than one
//! trusted-but-verified document needs.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Largest accepted response body: a JWKS is a few KiB, so 1 MiB leaves room and still bounds memory.
pub const MAX_BODY: usize = 1024 * 1024;
/// Default limit for resolving the host, connecting and the TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default limit for sending the request and reading the whole response.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest accepted status line plus headers.
const MAX_HEAD: usize = 16 * 1024;
/// Longest accepted chunk-size line (hex size plus any extensions).
const MAX_CHUNK_LINE: usize = 1024;
/// Interim (1xx) responses skipped before the real one; more is a misbehaving server.
const MAX_INTERIM: usize = 4;

/// A parsed `https://host[:port][/path][?query]` URL (the fragment is dropped: it is never sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsUrl {
    host: String,
    port: u16,
    target: String,
}

/// Why a URL is not usable as a JWKS URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Any scheme but `https` (plain HTTP would let anyone on the path swap the signing keys).
    #[error("must be an https:// URL")]
    NotHttps,
    /// Spaces or control characters, which a request line cannot carry.
    #[error("must not contain spaces or control characters")]
    BadCharacter,
    /// `user:password@` in the authority; credentials do not belong in a logged URL.
    #[error("must not contain user information (user@host)")]
    UserInfo,
    /// No host between `https://` and the path.
    #[error("has no host")]
    NoHost,
    /// A host that is neither a DNS name nor an IP address.
    #[error("has an invalid host name")]
    InvalidHost,
    /// A port that is not a number from 1 to 65535.
    #[error("has an invalid port")]
    InvalidPort,
}

/// Why a fetch failed. Messages say which step failed (including the I/O error, which is
/// therefore not also a `source`); they never include the body.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Resolving or connecting failed.
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    /// Connecting plus the TLS handshake took longer than the connect timeout.
    #[error("no connection within {0:?}")]
    ConnectTimeout(Duration),
    /// The TLS handshake failed (often: the certificate is not trusted or names another host).
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    /// Sending the request or reading the response failed.
    #[error("connection failed while reading the response: {0}")]
    Io(io::Error),
    /// The whole response did not arrive within the read timeout.
    #[error("no complete response within {0:?}")]
    ReadTimeout(Duration),
    /// A 3xx answer; redirects are never followed.
    #[error("server answered HTTP {0} (a redirect); redirects are not followed")]
    Redirect(u16),
    /// Any other status but 200.
    #[error("server answered HTTP {0}, expected 200")]
    Status(u16),
    /// The body is larger than the cap.
    #[error("response body is larger than {0} bytes")]
    TooLarge(usize),
    /// The response does not follow HTTP/1.1 framing rules this client accepts.
    #[error("malformed HTTP response: {0}")]
    Malformed(&'static str),
    /// The connection ended before the announced body was complete.
    #[error("connection closed before the response was complete")]
    Truncated,
}

/// Timeouts and the body cap of an [`HttpsClient`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Resolving, connecting and the TLS handshake.
    pub connect_timeout: Duration,
    /// Sending the request and reading the whole response.
    pub read_timeout: Duration,
    /// Largest accepted body, in bytes.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { connect_timeout: CONNECT_TIMEOUT, read_timeout: READ_TIMEOUT, max_body: MAX_BODY }
    }
}

/// Fetches documents over HTTPS with one TLS configuration and fixed limits.
#[derive(Clone)]
pub struct HttpsClient {
    connector: TlsConnector,
    limits: Limits,
}

impl fmt::Debug for HttpsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpsClient").field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl HttpsUrl {
    /// Parses and checks an `https://` URL.
    pub fn parse(text: &str) -> Result<HttpsUrl, UrlError> {
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(UrlError::BadCharacter);
        }
        let (scheme, rest) = text.split_once("://").ok_or(UrlError::NotHttps)?;
        if !scheme.eq_ignore_ascii_case("https") {
            return Err(UrlError::NotHttps);
        }
        let rest = rest.split('#').next().unwrap_or_default();
        let (authority, target) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        if authority.contains('@') {
            return Err(UrlError::UserInfo);
        }
        let (host, port) = split_host_port(authority)?;
        ServerName::try_from(host).map_err(|_| UrlError::InvalidHost)?;
        let target = match target {
            "" => "/".to_owned(),
            t if t.starts_with('?') => format!("/{t}"),
            t => t.to_owned(),
        };
        Ok(HttpsUrl { host: host.to_owned(), port, target })
    }

    /// The host name or IP address (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port (443 unless given).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host[:port]` as the `Host` header wants it (brackets around IPv6, port only when not 443).
    fn authority(&self) -> String {
        let host = match self.host.contains(':') {
            true => format!("[{}]", self.host),
            false => self.host.clone(),
        };
        match self.port {
            443 => host,
            port => format!("{host}:{port}"),
        }
    }
}

impl fmt::Display for HttpsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "https://{}{}", self.authority(), self.target)
    }
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(authority: &str) -> Result<(&str, u16), UrlError> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest.split_once(']').ok_or(UrlError::InvalidHost)?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or(UrlError::InvalidHost)?),
            };
            (host, port)
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Err(UrlError::NoHost);
    }
    let port = match port {
        None => 443,
        // Digits only: `u16::from_str` would also take a leading `+`.
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            p.parse::<u16>().ok().filter(|n| *n != 0).ok_or(UrlError::InvalidPort)?
        }
        Some(_) => return Err(UrlError::InvalidPort),
    };
    Ok((host, port))
}

impl HttpsClient {
    /// A client that verifies servers with `tls` (built with the aws-lc-rs provider, see [`crate::tls`]).
    pub fn new(tls: Arc<ClientConfig>, limits: Limits) -> HttpsClient {
        HttpsClient { connector: TlsConnector::from(tls), limits }
    }

    /// `GET url`: the body of a 200 answer, or why there is none.
    pub async fn get(&self, url: &HttpsUrl) -> Result<Vec<u8>, FetchError> {
        let Limits { connect_timeout, read_timeout, max_body } = self.limits;
        let stream = tokio::time::timeout(connect_timeout, self.connect(url))
            .await
            .map_err(|_| FetchError::ConnectTimeout(connect_timeout))??;
        tokio::time::timeout(read_timeout, exchange(stream, url, max_body))
            .await
            .map_err(|_| FetchError::ReadTimeout(read_timeout))?
    }

    async fn connect(&self, url: &HttpsUrl) -> Result<tokio_rustls::client::TlsStream<TcpStream>, FetchError> {
        let tcp = TcpStream::connect((url.host.as_str(), url.port)).await.map_err(FetchError::Connect)?;
        let _ = tcp.set_nodelay(true);
        // Checked in `HttpsUrl::parse`; this cannot fail for a parsed URL.
        let name = ServerName::try_from(url.host.clone())
            .map_err(|_| FetchError::Tls(io::Error::other("invalid server name")))?;
        self.connector.connect(name, tcp).await.map_err(FetchError::Tls)
    }
}

/// Sends the request on an established stream and reads the answer.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    url: &HttpsUrl,
    max_body: usize,
) -> Result<Vec<u8>, FetchError> {
    stream.write_all(request(url).as_bytes()).await.map_err(FetchError::Io)?;
    stream.flush().await.map_err(FetchError::Io)?;
    read_response(stream, max_body).await
}

/// The request bytes. `Accept-Encoding: identity` because compressed bodies are refused.
fn request(url: &HttpsUrl) -> String {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: pgtenant/{}\r\n\
         Accept: application/jwk-set+json, application/json\r\nAccept-Encoding: identity\r\n\
         Connection: close\r\n\r\n",
        url.target,
        url.authority(),
        env!("CARGO_PKG_VERSION"),
    )
}

/// Reads one response from `reader`; the body of a 200 answer of at most `max_body` bytes.
async fn read_response<R: AsyncRead + Unpin>(reader: R, max_body: usize) -> Result<Vec<u8>, FetchError> {
    let mut input = Input { reader, buf: Vec::new(), pos: 0 };
    let mut head = input.head().await?;
    for _ in 0..MAX_INTERIM {
        if !(100..200).contains(&head.status) {
            break;
        }
        head = input.head().await?;
    }
    match head.status {
        200 => {}
        status @ 300..=399 => return Err(FetchError::Redirect(status)),
        status => return Err(FetchError::Status(status)),
    }
    match head.framing {
        Framing::Chunked => input.chunked(max_body).await,
        Framing::Length(n) if n > max_body => Err(FetchError::TooLarge(max_body)),
        Framing::Length(n) => input.exact(n, Vec::with_capacity(n)).await,
        Framing::UntilClose => input.until_close(max_body).await,
    }
}

/// How the body's end is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Chunked,
    Length(usize),
    UntilClose,
}

/// The parts of a response head this client acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    status: u16,
    framing: Framing,
}

impl Head {
    fn parse(bytes: &[u8]) -> Result<Head, FetchError> {
        let text = std::str::from_utf8(bytes).map_err(|_| FetchError::Malformed("header bytes are not UTF-8"))?;
        let mut lines = text.split("\r\n");
        let status = status_code(lines.next().unwrap_or_default())?;
        let (mut length, mut chunked) = (None, false);
        for line in lines {
            let (name, value) = line.split_once(':').ok_or(FetchError::Malformed("header line without a colon"))?;
            if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace()) {
                return Err(FetchError::Malformed("invalid header name"));
            }
            let value = value.trim_matches([' ', '\t']);
            if name.eq_ignore_ascii_case("content-length") {
                let n = content_length(value)?;
                if length.is_some_and(|old| old != n) {
                    return Err(FetchError::Malformed("conflicting Content-Length headers"));
                }
                length = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = transfer_encoding(value)?;
            } else if name.eq_ignore_ascii_case("content-encoding") && !value.eq_ignore_ascii_case("identity") {
                return Err(FetchError::Malformed("compressed bodies are not accepted"));
            }
        }
        // RFC 9112 §6.3: chunked wins over Content-Length.
        let framing = match (chunked, length) {
            (true, _) => Framing::Chunked,
            (false, Some(n)) => Framing::Length(n),
            (false, None) => Framing::UntilClose,
        };
        Ok(Head { status, framing })
    }
}

/// The status code of an `HTTP/1.x NNN reason` line.
fn status_code(line: &str) -> Result<u16, FetchError> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") || code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FetchError::Malformed("invalid status line"));
    }
    code.parse().map_err(|_| FetchError::Malformed("invalid status line"))
}

/// A `Content-Length` value; one too large for memory counts as `usize::MAX` (and then exceeds any cap).
fn content_length(value: &str) -> Result<usize, FetchError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FetchError::Malformed("invalid Content-Length"));
    }
    Ok(value.parse::<usize>().unwrap_or(usize::MAX))
}

/// Whether the body is chunked; any other transfer coding (gzip, ...) is refused.
fn transfer_encoding(value: &str) -> Result<bool, FetchError> {
    let mut codings = value.split(',').map(str::trim).filter(|c| !c.is_empty());
    match (codings.next(), codings.next()) {
        (Some(c), None) if c.eq_ignore_ascii_case("chunked") => Ok(true),
        (None, None) => Ok(false),
        _ => Err(FetchError::Malformed("unsupported Transfer-Encoding")),
    }
}

/// The size from a chunk-size line (`1a;ext=x`).
fn chunk_size(line: &[u8]) -> Result<usize, FetchError> {
    let bad = || FetchError::Malformed("invalid chunk size");
    let text = std::str::from_utf8(line).map_err(|_| bad())?;
    let hex = text.split(';').next().unwrap_or_default().trim_matches([' ', '\t']);
    if hex.is_empty() || hex.len() > 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let size = u64::from_str_radix(hex, 16).map_err(|_| bad())?;
    Ok(usize::try_from(size).unwrap_or(usize::MAX))
}

/// Buffered reading with the few primitives HTTP framing needs.
struct Input<R> {
    reader: R,
    buf: Vec<u8>,
    pos: usize,
}

impl<R: AsyncRead + Unpin> Input<R> {
    /// Reads more bytes into the buffer; `false` at the end of the stream.
    async fn fill(&mut self) -> Result<bool, FetchError> {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        let mut chunk = [0u8; 8192];
        let n = self.reader.read(&mut chunk).await.map_err(FetchError::Io)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    fn available(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// The bytes before the next `delim` (consumed along with it); more than `max` is `too_long`.
    async fn until(&mut self, delim: &[u8], max: usize, too_long: &'static str) -> Result<Vec<u8>, FetchError> {
        loop {
            let avail = self.available();
            if let Some(i) = avail.windows(delim.len()).position(|w| w == delim) {
                if i > max {
                    return Err(FetchError::Malformed(too_long));
                }
                let out = avail[..i].to_vec();
                self.pos += i + delim.len();
                return Ok(out);
            }
            if avail.len() > max + delim.len() {
                return Err(FetchError::Malformed(too_long));
            }
            if !self.fill().await? {
                return Err(FetchError::Truncated);
            }
        }
    }

    async fn head(&mut self) -> Result<Head, FetchError> {
        let bytes = self.until(b"\r\n\r\n", MAX_HEAD, "response headers are too large").await?;
        Head::parse(&bytes)
    }

    /// Appends exactly `n` more bytes to `out`.
    async fn exact(&mut self, n: usize, mut out: Vec<u8>) -> Result<Vec<u8>, FetchError> {
        while self.available().len() < n {
            if !self.fill().await? {
                return Err(FetchError::Truncated);
            }
        }
        out.extend_from_slice(&self.available()[..n]);
        self.pos += n;
        Ok(out)
    }

    /// Reads to the end of the stream, failing as soon as more than `max` bytes arrived.
    async fn until_close(&mut self, max: usize) -> Result<Vec<u8>, FetchError> {
        loop {
            if self.available().len() > max {
                return Err(FetchError::TooLarge(max));
            }
            if !self.fill().await? {
                return Ok(self.available().to_vec());
            }
        }
    }

    /// Decodes a chunked body, counting decoded bytes against `max` before reading each chunk.
    async fn chunked(&mut self, max: usize) -> Result<Vec<u8>, FetchError> {
        let mut body = Vec::new();
        loop {
            let line = self.until(b"\r\n", MAX_CHUNK_LINE, "chunk size line is too long").await?;
            let size = chunk_size(&line)?;
            if size == 0 {
                // Trailers are of no interest and the connection closes anyway.
                return Ok(body);
            }
            if size > max - body.len() {
                return Err(FetchError::TooLarge(max));
            }
            body = self.exact(size, body).await?;
            self.until(b"\r\n", 0, "chunk data not followed by CRLF").await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> HttpsUrl {
        HttpsUrl::parse(text).unwrap()
    }

    async fn read(raw: &[u8], max: usize) -> Result<Vec<u8>, FetchError> {
        read_response(raw, max).await
    }

    #[test]
    fn urls_must_be_https_with_a_host() {
        let u = url("https://issuer.example/.well-known/jwks.json");
        assert_eq!((u.host(), u.port(), u.target.as_str()), ("issuer.example", 443, "/.well-known/jwks.json"));
        assert_eq!(u.to_string(), "https://issuer.example/.well-known/jwks.json");
        let u = url("HTTPS://127.0.0.1:8443?tenant=x#frag");
        assert_eq!((u.host(), u.port(), u.target.as_str()), ("127.0.0.1", 8443, "/?tenant=x"));
        assert_eq!(u.to_string(), "https://127.0.0.1:8443/?tenant=x");
        let u = url("https://[::1]:9000");
        assert_eq!((u.host(), u.port(), u.target.as_str()), ("::1", 9000, "/"));
        assert_eq!(u.authority(), "[::1]:9000");
        for (text, want) in [
            ("http://issuer.example/jwks", UrlError::NotHttps),
            ("issuer.example/jwks", UrlError::NotHttps),
            ("ftp://issuer.example/jwks", UrlError::NotHttps),
            ("https://", UrlError::NoHost),
            ("https:///jwks", UrlError::NoHost),
            ("https://:443/jwks", UrlError::NoHost),
            ("https://user:pw@issuer.example/", UrlError::UserInfo),
            ("https://issuer.example:0/", UrlError::InvalidPort),
            ("https://issuer.example:65536/", UrlError::InvalidPort),
            ("https://issuer.example:+80/", UrlError::InvalidPort),
            ("https://issuer.example:/", UrlError::InvalidPort),
            ("https://[::1/", UrlError::InvalidHost),
            ("https://bad_host!/", UrlError::InvalidHost),
            ("https://issuer.example/a b", UrlError::BadCharacter),
            ("https://issuer.example/\r\nX: y", UrlError::BadCharacter),
        ] {
            assert_eq!(HttpsUrl::parse(text), Err(want), "{text}");
        }
    }

    #[test]
    fn request_closes_the_connection_and_names_the_host() {
        let req = request(&url("https://issuer.example:8443/keys?x=1"));
        assert!(req.starts_with("GET /keys?x=1 HTTP/1.1\r\nHost: issuer.example:8443\r\n"), "{req}");
        assert!(req.contains("\r\nConnection: close\r\n") && req.ends_with("\r\n\r\n"), "{req}");
        assert!(request(&url("https://issuer.example/")).contains("Host: issuer.example\r\n"));
    }

    #[tokio::test]
    async fn content_length_body() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n{\"a\"}extra";
        assert_eq!(read(raw, 1024).await.unwrap(), b"{\"a\"}");
        let short = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345";
        assert!(matches!(read(short, 1024).await, Err(FetchError::Truncated)));
        let conflict = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\ncontent-length: 2\r\n\r\nab";
        assert!(matches!(read(conflict, 1024).await, Err(FetchError::Malformed(_))));
        let same = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nab";
        assert_eq!(read(same, 1024).await.unwrap(), b"ab");
        let bad = b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n";
        assert!(matches!(read(bad, 1024).await, Err(FetchError::Malformed(_))));
    }

    #[tokio::test]
    async fn chunked_body() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n\
                    4\r\n{\"ke\r\nA;name=value\r\nys\":[]}   \r\n0\r\nTrailer: x\r\n\r\n";
        assert_eq!(read(raw, 1024).await.unwrap(), b"{\"keys\":[]}   ");
        let missing_crlf = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n";
        assert!(matches!(read(missing_crlf, 1024).await, Err(FetchError::Malformed(_))));
        let bad_size = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n";
        assert!(matches!(read(bad_size, 1024).await, Err(FetchError::Malformed(_))));
        let huge_size = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nab";
        assert!(matches!(read(huge_size, 1024).await, Err(FetchError::TooLarge(1024))));
        let unterminated = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n";
        assert!(matches!(read(unterminated, 1024).await, Err(FetchError::Truncated)));
        let gzip = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert!(matches!(read(gzip, 1024).await, Err(FetchError::Malformed(_))));
    }

    #[tokio::test]
    async fn body_until_close() {
        let raw = b"HTTP/1.0 200 OK\r\n\r\n{\"keys\":[]}";
        assert_eq!(read(raw, 1024).await.unwrap(), b"{\"keys\":[]}");
        assert_eq!(read(b"HTTP/1.1 200 OK\r\n\r\n", 1024).await.unwrap(), b"");
    }

    #[tokio::test]
    async fn size_cap_is_enforced_while_reading() {
        let exactly = format!("HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n{}", "x".repeat(16));
        assert_eq!(read(exactly.as_bytes(), 16).await.unwrap().len(), 16);
        // Announced too large: refused from the header, before any body byte.
        let announced = b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n";
        assert!(matches!(read(announced, 16).await, Err(FetchError::TooLarge(16))));
        let overflow = b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n";
        assert!(matches!(read(overflow, 16).await, Err(FetchError::TooLarge(16))));
        // An endless body (no length, never closed) stops at the cap instead of filling memory.
        let endless = (&b"HTTP/1.1 200 OK\r\n\r\n"[..]).chain(tokio::io::repeat(b'x'));
        assert!(matches!(read_response(endless, 100_000).await, Err(FetchError::TooLarge(100_000))));
        // Endless chunks: the decoded total is what counts.
        let chunk = b"10\r\n0123456789abcdef\r\n".repeat(1000);
        let chunked = (&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"[..]).chain(&chunk[..]);
        assert!(matches!(read_response(chunked, 1000).await, Err(FetchError::TooLarge(1000))));
    }

    #[tokio::test]
    async fn redirects_and_errors_name_the_status() {
        for status in [301, 302, 303, 307, 308] {
            let raw = format!("HTTP/1.1 {status} Moved\r\nLocation: https://evil.example/\r\n\r\n");
            let err = read(raw.as_bytes(), 1024).await.unwrap_err();
            assert!(matches!(err, FetchError::Redirect(s) if s == status), "{err}");
            assert!(err.to_string().contains(&status.to_string()) && err.to_string().contains("redirect"), "{err}");
        }
        let err = read(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", 1024).await.unwrap_err();
        assert_eq!(err.to_string(), "server answered HTTP 404, expected 200");
        // Interim answers are skipped.
        let interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(read(interim, 1024).await.unwrap(), b"ok");
    }

    #[tokio::test]
    async fn malformed_heads_are_refused() {
        for raw in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/2 200\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n\r\n",
        ] {
            assert!(matches!(read(raw, 1024).await, Err(FetchError::Malformed(_))), "{}", String::from_utf8_lossy(raw));
        }
        assert!(matches!(read(b"HTTP/1.1 200 OK\r\n", 1024).await, Err(FetchError::Truncated)));
        let big_head = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "y".repeat(MAX_HEAD));
        assert!(matches!(read(big_head.as_bytes(), 1024).await, Err(FetchError::Malformed(_))));
        let endless_head = (&b"HTTP/1.1 200 OK\r\nX: "[..]).chain(tokio::io::repeat(b'y'));
        assert!(matches!(read_response(endless_head, 1024).await, Err(FetchError::Malformed(_))));
    }

    #[tokio::test]
    async fn connect_timeout_applies_to_a_silent_server() {
        // Accepts TCP but never answers the TLS handshake.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hold = tokio::spawn(async move {
            let (_socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let limits = Limits { connect_timeout: Duration::from_millis(300), ..Limits::default() };
        let client = HttpsClient::new(crate::tls::https_client_config(None).unwrap(), limits);
        let started = std::time::Instant::now();
        let err = client.get(&url(&format!("https://127.0.0.1:{port}/jwks"))).await.unwrap_err();
        assert!(matches!(err, FetchError::ConnectTimeout(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        hold.abort();
        // Nothing listening: a connect error, not a timeout.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
        let err = client.get(&url(&format!("https://127.0.0.1:{closed}/jwks"))).await.unwrap_err();
        assert!(matches!(err, FetchError::Connect(_)), "{err}");
    }
}
