//! Message framing: the 5-byte header (tag + length) and its size limits.
//!
//! A proxy must frame every message but decode only the few it inspects, so
//! this module answers one question: is a whole message at the front of the
//! buffer, and how long is it? It never allocates based on a length it read.

use thiserror::Error;

/// Bytes in a regular message header: one tag byte and a 4-byte big-endian length.
pub const HEADER_LEN: usize = 5;

/// A framing problem: the peer sent something no valid stream can contain.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length field is smaller than the 4 bytes it occupies itself.
    #[error("invalid message length {0}")]
    BadLength(u32),
    /// The message is larger than the limit for this side.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Declared length of the message.
        len: usize,
        /// The limit in force.
        max: usize,
    },
}

/// Where a complete message sits at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message type byte.
    pub tag: u8,
    /// Total length on the wire, tag byte included.
    pub total: usize,
}

impl Header {
    /// Length of the body (after the 5-byte header).
    pub fn body_len(&self) -> usize {
        self.total - HEADER_LEN
    }
}

/// Reads the header at the front of `buf`. `Ok(None)` means "need more bytes",
/// which is normal flow; `max` caps the total message size.
pub fn peek_header(buf: &[u8], max: usize) -> Result<Option<Header>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::BadLength(len));
    }
    let total = len as usize + 1;
    if total > max {
        return Err(FrameError::TooLarge { len: total, max });
    }
    Ok(Some(Header { tag: buf[0], total }))
}

/// Returns the header of the message at the front of `buf` only when the whole
/// message is already buffered.
pub fn complete_header(buf: &[u8], max: usize) -> Result<Option<Header>, FrameError> {
    match peek_header(buf, max)? {
        Some(h) if buf.len() >= h.total => Ok(Some(h)),
        _ => Ok(None),
    }
}

/// Reads a NUL-terminated string at the front of `buf`; returns it (without the
/// NUL) and the rest, or `None` when no NUL is present.
pub fn cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = buf.iter().position(|&b| b == 0)?;
    Some((&buf[..nul], &buf[nul + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_header_needs_more() {
        assert_eq!(peek_header(b"Q\0\0", 100), Ok(None));
    }

    #[test]
    fn header_and_body_len() {
        let h = peek_header(b"Q\0\0\0\x09abcd", 100).unwrap().unwrap();
        assert_eq!(h, Header { tag: b'Q', total: 10 });
        assert_eq!(h.body_len(), 5);
        assert_eq!(complete_header(b"Q\0\0\0\x09abcd", 100), Ok(None));
        assert!(complete_header(b"Q\0\0\0\x09abcd\0", 100).unwrap().is_some());
    }

    #[test]
    fn rejects_short_and_huge_lengths() {
        assert_eq!(peek_header(b"Q\0\0\0\x03", 100), Err(FrameError::BadLength(3)));
        assert_eq!(
            peek_header(b"Q\xff\xff\xff\xff", 1 << 20),
            Err(FrameError::TooLarge { len: 0xffff_ffff + 1, max: 1 << 20 })
        );
    }

    #[test]
    fn cstr_splits_at_nul() {
        assert_eq!(cstr(b"ab\0cd"), Some((&b"ab"[..], &b"cd"[..])));
        assert_eq!(cstr(b"ab"), None);
    }
}
