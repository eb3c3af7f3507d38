//! Reading and rewriting the fields of ErrorResponse / NoticeResponse bodies.
//!
//! The proxy rewrites exactly two things in server errors: the statement
//! position (`P`), which must point into the client's own text, and the
//! error raised by a refused statement's stand-in, which becomes a 42501.

use bytes::{BufMut, BytesMut};

/// One field of an error body: type byte and raw value.
pub type Field<'a> = (u8, &'a [u8]);

/// Splits an ErrorResponse/NoticeResponse body into its fields. Returns `None`
/// for a body that is not a well-formed field list.
pub fn fields(body: &[u8]) -> Option<Vec<Field<'_>>> {
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let (&kind, tail) = rest.split_first()?;
        if kind == 0 {
            return tail.is_empty().then_some(out);
        }
        let (value, tail) = super::frame::cstr(tail)?;
        out.push((kind, value));
        rest = tail;
    }
}

/// The value of one field, if present.
pub fn field<'a>(fields: &[Field<'a>], kind: u8) -> Option<&'a [u8]> {
    fields.iter().find(|(k, _)| *k == kind).map(|(_, v)| *v)
}

/// Appends a whole 'E' message with the given fields, replacing the value of
/// `P` with `position` when one is given.
pub fn write_error(buf: &mut BytesMut, fields: &[Field<'_>], position: Option<usize>) {
    super::build::message(buf, b'E', |b| {
        for (kind, value) in fields {
            b.put_u8(*kind);
            match (kind, position) {
                (b'P', Some(p)) => b.put_slice(p.to_string().as_bytes()),
                _ => b.put_slice(value),
            }
            b.put_u8(0);
        }
        b.put_u8(0);
    });
}

/// Parses a decimal field value such as `P`.
pub fn parse_usize(value: &[u8]) -> Option<usize> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_rewrites_position() {
        let body = b"SERROR\0C42601\0Msyntax error\0P42\0\0";
        let f = fields(body).unwrap();
        assert_eq!(field(&f, b'C'), Some(&b"42601"[..]));
        assert_eq!(field(&f, b'P').and_then(parse_usize), Some(42));
        let mut out = BytesMut::new();
        write_error(&mut out, &f, Some(7));
        assert_eq!(&out[5..], b"SERROR\0C42601\0Msyntax error\0P7\0\0");
    }

    #[test]
    fn rejects_malformed_bodies() {
        assert!(fields(b"SERROR").is_none());
        assert!(fields(b"SERROR\0").is_none());
        assert!(fields(b"\0extra").is_none());
        assert_eq!(fields(b"\0").unwrap().len(), 0);
    }
}
