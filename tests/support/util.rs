//! Small helpers shared by the support modules: free ports, random strings, log tails.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::{Mutex, OnceLock};

/// A free TCP port on 127.0.0.1, never handed out twice in this process.
///
/// The port is found by binding port 0 and dropping the listener, so another process may
/// still take it before the caller binds it; callers retry on "address in use". Remembering
/// the ports handed out stops two tests of the same binary from racing for one port.
pub fn free_port() -> u16 {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(Default::default);
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        drop(listener);
        if handed_out.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// A random lowercase-hex string of `len` characters (from v4 UUIDs).
pub fn random_string(len: usize) -> String {
    let mut s = String::with_capacity(len + 32);
    while s.len() < len {
        s.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    s.truncate(len);
    s
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Reads a log file, or explains why it could not be read.
pub fn read_log(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("<could not read {}: {e}>", path.display()))
}
