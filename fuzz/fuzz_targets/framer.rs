//! Fuzzes the proxy's framing: `wire::frame::{peek_header, complete_header}` for typed
//! messages and `wire::startup::parse` for the untagged startup packets, fed the way the
//! session loops feed them (append what arrived, take every complete message off the front).
//!
//! Input layout: byte 0 chooses the size limit (low 3 bits), whether the stream starts in the
//! startup phase (bit 3) and how many cut points follow (high 4 bits); each cut is 2 bytes
//! (big-endian, modulo the stream length); the rest is the byte stream.
//!
//! Checks, besides "never panics":
//! - decoding the stream in one piece and in the chosen chunks gives the same messages, the
//!   same error (at the same place) and the same leftover bytes;
//! - a decoded message's length equals 1 + its header's length field, is at least 5 and at
//!   most the limit; `body_len` is the rest; `peek_header` agrees with `complete_header`;
//! - a length field below 4 is `BadLength`, a message over the limit is `TooLarge`, and
//!   nothing else is an error;
//! - a startup packet uses exactly its length field (8..=10000) and re-encodes to the same
//!   bytes (StartupMessage without protocol options, SSLRequest, GSSENCRequest, CancelRequest);
//! - ErrorResponse/NoticeResponse bodies that `wire::error::fields` accepts are rebuilt
//!   byte for byte by `wire::error::write_error`; PasswordMessage and DataRow bodies parse
//!   without panicking, and an accepted password fills the body exactly.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgtenant::wire::frame::{self, FrameError, Header, HEADER_LEN};
use pgtenant::wire::startup::{self, StartupError, StartupPacket, MAX_STARTUP_PACKET};
use pgtenant::wire::{build, error, row};

/// Size limits to frame under: tiny ones make `TooLarge` reachable, the others are the
/// proxy's password (16 KiB + 64), client (64 MiB) and server (1 GiB) limits, and none.
const LIMITS: [usize; 8] = [5, 6, 64, 300, 16 * 1024 + 64, 64 << 20, 1 << 30, usize::MAX];

/// Everything a decoding run produced, compared between chunkings.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Startup(StartupPacket, usize),
    StartupError(StartupError),
    Frame(Header, Vec<u8>),
    FrameError(FrameError),
}

#[derive(Debug, PartialEq, Eq)]
struct Run {
    events: Vec<Event>,
    /// Bytes buffered but never taken as a message (when no error stopped the run).
    leftover: usize,
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else { return };
    let max = LIMITS[usize::from(ctl & 7)];
    let startup_first = ctl & 8 != 0;
    let ncuts = usize::from(ctl >> 4);
    let (cut_bytes, stream) = rest.split_at((ncuts * 2).min(rest.len()));
    let mut cuts: Vec<usize> = cut_bytes
        .chunks(2)
        .map(|c| usize::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])) % (stream.len() + 1))
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut chunks = Vec::new();
    let mut from = 0;
    for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
        chunks.push(&stream[from..cut]);
        from = cut;
    }

    let whole = decode(&[stream], max, startup_first);
    let pieces = decode(&chunks, max, startup_first);
    assert_eq!(whole, pieces, "chunking changed the decoding (cuts {cuts:?})");
    check_events(&whole, stream, max);
});

/// Decodes like the session loops: append each chunk, then take messages off the front
/// until one is incomplete; an error ends the connection.
fn decode(chunks: &[&[u8]], max: usize, startup_first: bool) -> Run {
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    let mut in_startup = startup_first;
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            if in_startup {
                match startup::parse(&buf) {
                    Ok(Some((packet, used))) => {
                        let _ = buf.split_to(used);
                        in_startup = !matches!(packet, StartupPacket::Startup(_));
                        let cancel = matches!(packet, StartupPacket::Cancel { .. });
                        events.push(Event::Startup(packet, used));
                        if cancel {
                            // The connection closes after a CancelRequest; what follows is never read.
                            return Run { events, leftover: 0 };
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        events.push(Event::StartupError(e));
                        return Run { events, leftover: 0 };
                    }
                }
                continue;
            }
            match frame::complete_header(&buf, max) {
                Ok(Some(h)) => {
                    let msg = buf.split_to(h.total);
                    events.push(Event::Frame(h, msg.to_vec()));
                }
                Ok(None) => {
                    // Incomplete: the header (if any) must still be acceptable.
                    assert!(frame::peek_header(&buf, max).is_ok());
                    break;
                }
                Err(e) => {
                    assert_eq!(frame::peek_header(&buf, max).err().as_ref(), Some(&e));
                    events.push(Event::FrameError(e));
                    return Run { events, leftover: 0 };
                }
            }
        }
    }
    Run { events, leftover: buf.len() }
}

/// Per-message invariants, with the stream offsets recomputed independently.
fn check_events(run: &Run, stream: &[u8], max: usize) {
    let mut at = 0;
    for event in &run.events {
        let rest = &stream[at..];
        match event {
            Event::Startup(packet, used) => {
                let declared = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
                assert_eq!(*used, declared);
                assert!((8..=MAX_STARTUP_PACKET).contains(used));
                check_startup_roundtrip(packet, &rest[..*used]);
                at += used;
            }
            Event::StartupError(e) => {
                assert!(rest.len() >= 4, "startup error before a length was readable");
                let declared = u32::from_be_bytes(rest[..4].try_into().unwrap());
                if !(8..=MAX_STARTUP_PACKET as u32).contains(&declared) {
                    assert_eq!(*e, StartupError::BadLength(declared));
                } else {
                    assert!(rest.len() >= declared as usize, "startup error on an incomplete packet");
                    assert!(!matches!(e, StartupError::BadLength(_)));
                }
            }
            Event::Frame(h, bytes) => {
                let declared = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
                assert_eq!(h.tag, rest[0]);
                assert_eq!(h.total, declared + 1);
                assert_eq!(bytes.len(), h.total);
                assert_eq!(&bytes[..], &rest[..h.total]);
                assert!(h.total >= HEADER_LEN && h.total <= max, "accepted {h:?} over limit {max}");
                assert_eq!(h.body_len(), h.total - HEADER_LEN);
                assert_eq!(frame::peek_header(bytes, max), Ok(Some(*h)));
                check_body(h.tag, bytes);
                at += h.total;
            }
            Event::FrameError(e) => {
                assert!(rest.len() >= HEADER_LEN, "frame error before a header was readable");
                let declared = u32::from_be_bytes(rest[1..5].try_into().unwrap());
                let expected = if declared < 4 {
                    FrameError::BadLength(declared)
                } else {
                    FrameError::TooLarge { len: declared as usize + 1, max }
                };
                assert!(declared < 4 || declared as usize + 1 > max, "error {e:?} for an acceptable length");
                assert_eq!(*e, expected);
            }
        }
    }
    let closed = matches!(
        run.events.last(),
        Some(Event::StartupError(_) | Event::FrameError(_) | Event::Startup(StartupPacket::Cancel { .. }, _))
    );
    if !closed {
        assert_eq!(at + run.leftover, stream.len());
    }
}

/// The packet re-encodes to the bytes it was parsed from, where the parse keeps everything.
fn check_startup_roundtrip(packet: &StartupPacket, bytes: &[u8]) {
    let rebuilt = match packet {
        StartupPacket::SslRequest => with_length(&80_877_103u32.to_be_bytes()),
        StartupPacket::GssEncRequest => with_length(&80_877_104u32.to_be_bytes()),
        StartupPacket::Cancel { pid, secret } => build::cancel_request(*pid, *secret).to_vec(),
        StartupPacket::Startup(s) => {
            // `_pq_.` options keep their names only; check the rest of the layout.
            let _ = pgtenant::session::params::from_startup(&s.params);
            if !s.protocol_options.is_empty() {
                return;
            }
            let mut body = (3u32 << 16 | u32::from(s.minor)).to_be_bytes().to_vec();
            for (name, value) in &s.params {
                for part in [name, value] {
                    assert!(!part.as_bytes().contains(&0));
                    body.extend_from_slice(part.as_bytes());
                    body.push(0);
                }
            }
            body.push(0);
            with_length(&body)
        }
    };
    assert_eq!(rebuilt, bytes, "{packet:?} does not re-encode to its bytes");
}

fn with_length(body: &[u8]) -> Vec<u8> {
    let mut v = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

fn check_body(tag: u8, msg: &[u8]) {
    let body = &msg[HEADER_LEN..];
    match tag {
        b'E' | b'N' => {
            if let Some(fields) = error::fields(body) {
                assert!(fields.iter().all(|(k, v)| *k != 0 && !v.contains(&0)));
                let mut out = BytesMut::new();
                error::write_error(&mut out, &fields, None);
                // write_error always builds an 'E'.
                assert_eq!(&out[HEADER_LEN..], body);
                assert_eq!(&out[1..HEADER_LEN], &msg[1..HEADER_LEN]);
                if let Some(p) = error::field(&fields, b'P').and_then(error::parse_usize) {
                    let mut out = BytesMut::new();
                    error::write_error(&mut out, &fields, Some(p));
                    let again = error::fields(&out[HEADER_LEN..]).expect("rewritten error parses");
                    assert_eq!(error::field(&again, b'P').and_then(error::parse_usize), Some(p));
                }
            }
        }
        b'p' => {
            if let Ok(password) = startup::password(body) {
                assert_eq!(password.len() + 1, body.len());
                assert!(!password.as_bytes().contains(&0));
            }
        }
        b'D' => {
            if let Some(values) = row::parse_data_row(body) {
                assert!(values.len() <= i16::MAX as usize);
            }
        }
        _ => {}
    }
}
