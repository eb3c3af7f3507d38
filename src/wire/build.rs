//! Builders for the messages the proxy writes itself. Each appends one whole
//! message to a buffer; lengths are filled in after the body is written.

use bytes::{BufMut, BytesMut};

/// Appends a message with `tag`, letting `body` write its payload.
pub fn message(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_u32(0);
    body(buf);
    let len = (buf.len() - at) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(buf: &mut BytesMut, s: &[u8]) {
    buf.put_slice(s);
    buf.put_u8(0);
}

/// Severity of an ErrorResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends after this message.
    Fatal,
}

impl Severity {
    fn as_bytes(self) -> &'static [u8] {
        match self {
            Severity::Error => b"ERROR",
            Severity::Fatal => b"FATAL",
        }
    }
}

/// ErrorResponse ('E') with severity, SQLSTATE, message and an optional hint.
pub fn error_response(buf: &mut BytesMut, sev: Severity, code: &str, msg: &str, hint: Option<&str>) {
    message(buf, b'E', |b| {
        for field in [b'S', b'V'] {
            b.put_u8(field);
            put_cstr(b, sev.as_bytes());
        }
        b.put_u8(b'C');
        put_cstr(b, code.as_bytes());
        b.put_u8(b'M');
        put_cstr(b, msg.as_bytes());
        if let Some(h) = hint {
            b.put_u8(b'H');
            put_cstr(b, h.as_bytes());
        }
        b.put_u8(0);
    });
}

/// ReadyForQuery ('Z') with a transaction status byte.
pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    message(buf, b'Z', |b| b.put_u8(status));
}

/// ParameterStatus ('S').
pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    message(buf, b'S', |b| {
        put_cstr(b, name.as_bytes());
        put_cstr(b, value.as_bytes());
    });
}

/// BackendKeyData ('K').
pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    message(buf, b'K', |b| {
        b.put_i32(pid);
        b.put_i32(secret);
    });
}

/// AuthenticationOk / AuthenticationCleartextPassword ('R').
pub fn authentication(buf: &mut BytesMut, code: i32) {
    message(buf, b'R', |b| b.put_i32(code));
}

/// NegotiateProtocolVersion ('v'): we speak 3.0 and none of the options.
pub fn negotiate_protocol_version(buf: &mut BytesMut, options: &[String]) {
    message(buf, b'v', |b| {
        b.put_i32(0);
        b.put_i32(options.len() as i32);
        for o in options {
            put_cstr(b, o.as_bytes());
        }
    });
}

/// Query ('Q') to the server.
pub fn query(buf: &mut BytesMut, sql: &[u8]) {
    message(buf, b'Q', |b| put_cstr(b, sql));
}

/// Parse ('P') of an unnamed statement with no parameter types.
pub fn parse_unnamed(buf: &mut BytesMut, sql: &[u8]) {
    message(buf, b'P', |b| {
        put_cstr(b, b"");
        put_cstr(b, sql);
        b.put_u16(0);
    });
}

/// Parse ('P') keeping the client's statement name and parameter types.
pub fn parse(buf: &mut BytesMut, name: &[u8], sql: &[u8], param_types: &[u8]) {
    message(buf, b'P', |b| {
        put_cstr(b, name);
        put_cstr(b, sql);
        b.put_slice(param_types);
    });
}

/// Bind ('B') of the unnamed statement to the unnamed portal, no parameters.
pub fn bind_unnamed(buf: &mut BytesMut) {
    message(buf, b'B', |b| {
        put_cstr(b, b"");
        put_cstr(b, b"");
        b.put_u16(0);
        b.put_u16(0);
        b.put_u16(0);
    });
}

/// Bind ('B') of `statement` to `portal` with text parameters and text results.
pub fn bind(buf: &mut BytesMut, portal: &[u8], statement: &[u8], params: &[&[u8]]) {
    message(buf, b'B', |b| {
        put_cstr(b, portal);
        put_cstr(b, statement);
        b.put_u16(0);
        b.put_u16(params.len() as u16);
        for p in params {
            b.put_u32(p.len() as u32);
            b.put_slice(p);
        }
        b.put_u16(0);
    });
}

/// Execute ('E') of the unnamed portal, all rows.
pub fn execute_unnamed(buf: &mut BytesMut) {
    message(buf, b'E', |b| {
        put_cstr(b, b"");
        b.put_i32(0);
    });
}

/// Execute ('E') of a named portal, all rows.
pub fn execute(buf: &mut BytesMut, portal: &[u8]) {
    message(buf, b'E', |b| {
        put_cstr(b, portal);
        b.put_i32(0);
    });
}

/// Describe ('D') of a portal.
pub fn describe_portal(buf: &mut BytesMut, portal: &[u8]) {
    message(buf, b'D', |b| {
        b.put_u8(b'P');
        put_cstr(b, portal);
    });
}

/// Close ('C') of a portal.
pub fn close_portal(buf: &mut BytesMut, portal: &[u8]) {
    message(buf, b'C', |b| {
        b.put_u8(b'P');
        put_cstr(b, portal);
    });
}

/// Sync ('S').
pub fn sync(buf: &mut BytesMut) {
    message(buf, b'S', |_| {});
}

/// Terminate ('X').
pub fn terminate(buf: &mut BytesMut) {
    message(buf, b'X', |_| {});
}

/// CancelRequest (untagged) for a server backend.
pub fn cancel_request(pid: i32, secret: i32) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&16u32.to_be_bytes());
    out[4..8].copy_from_slice(&80_877_102u32.to_be_bytes());
    out[8..12].copy_from_slice(&pid.to_be_bytes());
    out[12..].copy_from_slice(&secret.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_for_query_bytes() {
        let mut b = BytesMut::new();
        ready_for_query(&mut b, b'I');
        assert_eq!(&b[..], b"Z\0\0\0\x05I");
    }

    #[test]
    fn error_response_layout() {
        let mut b = BytesMut::new();
        error_response(&mut b, Severity::Fatal, "28P01", "bad", None);
        assert_eq!(&b[..], b"E\0\0\0\x1fSFATAL\0VFATAL\0C28P01\0Mbad\0\0");
    }

    #[test]
    fn query_layout() {
        let mut b = BytesMut::new();
        query(&mut b, b"select 1");
        assert_eq!(&b[..], b"Q\0\0\0\x0dselect 1\0");
    }
}
