//! The untagged packets a client may send before authentication:
//! SSLRequest, GSSENCRequest, CancelRequest and StartupMessage.

use thiserror::Error;

/// Largest startup packet accepted; PostgreSQL uses the same limit.
pub const MAX_STARTUP_PACKET: usize = 10_000;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
const PROTOCOL_3: u16 = 3;

/// One parsed startup-phase packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// The client asks to switch to TLS.
    SslRequest,
    /// The client asks for GSSAPI encryption (always declined).
    GssEncRequest,
    /// Cancel the query running on the connection with this key.
    Cancel {
        /// Process id from BackendKeyData.
        pid: i32,
        /// Secret from BackendKeyData.
        secret: i32,
    },
    /// A protocol 3.x StartupMessage.
    Startup(Startup),
}

/// The parameters of a StartupMessage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Startup {
    /// Minor protocol version requested (3.x); the proxy speaks 3.0.
    pub minor: u16,
    /// Parameters in the order sent, protocol options (`_pq_.*`) excluded.
    pub params: Vec<(String, String)>,
    /// Names of `_pq_.` protocol options the client asked for (unsupported).
    pub protocol_options: Vec<String>,
}

impl Startup {
    /// The value of a parameter, if the client sent it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Why a startup packet was rejected.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StartupError {
    /// The length field is out of range.
    #[error("invalid startup packet length {0}")]
    BadLength(u32),
    /// A protocol version this proxy does not speak.
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0")]
    UnsupportedProtocol {
        /// Major version requested.
        major: u16,
        /// Minor version requested.
        minor: u16,
    },
    /// The body does not follow the packet's layout.
    #[error("invalid startup packet layout: {0}")]
    Malformed(&'static str),
}

/// Parses the packet at the front of `buf`. `Ok(None)` means "need more bytes";
/// on success also returns how many bytes the packet used.
pub fn parse(buf: &[u8]) -> Result<Option<(StartupPacket, usize)>, StartupError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if !(8..=MAX_STARTUP_PACKET as u32).contains(&len) {
        return Err(StartupError::BadLength(len));
    }
    let len = len as usize;
    if buf.len() < len {
        return Ok(None);
    }
    let code = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let body = &buf[8..len];
    let packet = match code {
        SSL_REQUEST if body.is_empty() => StartupPacket::SslRequest,
        GSSENC_REQUEST if body.is_empty() => StartupPacket::GssEncRequest,
        SSL_REQUEST | GSSENC_REQUEST => return Err(StartupError::Malformed("unexpected payload")),
        CANCEL_REQUEST => parse_cancel(body)?,
        _ => StartupPacket::Startup(parse_startup(code, body)?),
    };
    Ok(Some((packet, len)))
}

/// Why a PasswordMessage body was rejected.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PasswordError {
    /// The body is not exactly one NUL-terminated string.
    #[error("malformed password message")]
    Malformed,
    /// The password is not valid UTF-8.
    #[error("password is not valid UTF-8")]
    NotUtf8,
}

/// The password in a PasswordMessage body (the bytes after the 5-byte header):
/// exactly one NUL-terminated UTF-8 string, nothing after it.
pub fn password(body: &[u8]) -> Result<&str, PasswordError> {
    let Some((password, b"")) = super::frame::cstr(body) else {
        return Err(PasswordError::Malformed);
    };
    std::str::from_utf8(password).map_err(|_| PasswordError::NotUtf8)
}

fn parse_cancel(body: &[u8]) -> Result<StartupPacket, StartupError> {
    // Protocol 3.0 keys are exactly 4 bytes; longer (3.2) keys never came from us.
    if body.len() != 8 {
        return Err(StartupError::Malformed("cancel request key must be 4 bytes"));
    }
    let pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let secret = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
    Ok(StartupPacket::Cancel { pid, secret })
}

fn parse_startup(code: u32, body: &[u8]) -> Result<Startup, StartupError> {
    let (major, minor) = ((code >> 16) as u16, (code & 0xffff) as u16);
    if major != PROTOCOL_3 {
        return Err(StartupError::UnsupportedProtocol { major, minor });
    }
    let mut params = Vec::new();
    let mut protocol_options = Vec::new();
    let mut rest = body;
    loop {
        let (name, tail) = split_cstr(rest)?;
        if name.is_empty() {
            if !tail.is_empty() {
                return Err(StartupError::Malformed("data after the terminator"));
            }
            break;
        }
        let (value, tail) = split_cstr(tail)?;
        rest = tail;
        let name = utf8(name)?;
        if name.starts_with("_pq_.") {
            protocol_options.push(name);
        } else {
            params.push((name, utf8(value)?));
        }
    }
    Ok(Startup { minor, params, protocol_options })
}

fn split_cstr(buf: &[u8]) -> Result<(&[u8], &[u8]), StartupError> {
    super::frame::cstr(buf).ok_or(StartupError::Malformed("missing string terminator"))
}

fn utf8(bytes: &[u8]) -> Result<String, StartupError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| StartupError::Malformed("invalid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: u32, body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(&code.to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn parses_ssl_gss_and_cancel() {
        let (p, n) = parse(&packet(SSL_REQUEST, b"")).unwrap().unwrap();
        assert_eq!((p, n), (StartupPacket::SslRequest, 8));
        let (p, _) = parse(&packet(GSSENC_REQUEST, b"")).unwrap().unwrap();
        assert_eq!(p, StartupPacket::GssEncRequest);
        let body = [0, 0, 0, 7, 0xff, 0xff, 0xff, 0xfe];
        let (p, _) = parse(&packet(CANCEL_REQUEST, &body)).unwrap().unwrap();
        assert_eq!(p, StartupPacket::Cancel { pid: 7, secret: -2 });
    }

    #[test]
    fn parses_startup_params() {
        let body = b"user\0bob\0database\0app\0_pq_.x\0y\0\0";
        let (p, n) = parse(&packet(196_608, body)).unwrap().unwrap();
        assert_eq!(n, body.len() + 8);
        let StartupPacket::Startup(s) = p else { panic!("not a startup") };
        assert_eq!(s.get("user"), Some("bob"));
        assert_eq!(s.get("database"), Some("app"));
        assert_eq!(s.protocol_options, vec!["_pq_.x".to_string()]);
    }

    #[test]
    fn incomplete_packet_waits() {
        let full = packet(196_608, b"user\0bob\0\0");
        assert_eq!(parse(&full[..full.len() - 1]), Ok(None));
        assert_eq!(parse(&full[..3]), Ok(None));
    }

    #[test]
    fn rejects_bad_packets() {
        assert_eq!(parse(&[0, 0, 0, 4, 0, 0, 0, 0]), Err(StartupError::BadLength(4)));
        assert_eq!(parse(&[0, 1, 0, 0]), Err(StartupError::BadLength(65536)));
        assert!(matches!(parse(&packet(0x0002_0000, b"\0")), Err(StartupError::UnsupportedProtocol { major: 2, .. })));
        assert!(parse(&packet(196_608, b"user\0bob")).is_err());
        assert!(parse(&packet(196_608, b"user\0\xff\xfe\0\0")).is_err());
        assert!(parse(&packet(196_608, b"\0junk")).is_err());
        assert!(parse(&packet(CANCEL_REQUEST, b"1234")).is_err());
    }

    #[test]
    fn parses_password_bodies() {
        assert_eq!(password(b"tok.en\0"), Ok("tok.en"));
        assert_eq!(password(b"\0"), Ok(""));
        assert_eq!(password(b"tok"), Err(PasswordError::Malformed));
        assert_eq!(password(b"tok\0x"), Err(PasswordError::Malformed));
        assert_eq!(password(b"\xff\0"), Err(PasswordError::NotUtf8));
    }
}
