//! Named prepared statements in transaction pooling, the way PgBouncer 1.21+
//! does it: a client's named statements live in the session, and each server
//! connection gets them prepared under proxy-chosen names, once, whenever a
//! Bind or Describe needs them there. Identical text (and parameter types)
//! shares one server-side name across all clients.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use dashmap::DashMap;

use crate::auth::signing;
use crate::wire::{build, frame};

/// One statement text as prepared upstream.
#[derive(Debug)]
pub struct Statement {
    /// Process-wide id; the server-side name is derived from it.
    pub id: u64,
    /// The query text.
    pub text: Bytes,
    /// The Parse message's parameter-type section (count and OIDs).
    pub types: Bytes,
    /// Whether the text contains transaction control.
    pub tx: bool,
    /// Whether the tenant must be set again after it: it ends a transaction
    /// (COMMIT, ROLLBACK, ... AND CHAIN) or rolls back to a savepoint.
    pub tx_end: bool,
    /// Whether it only sets up a transaction (`BEGIN ...`, `SET TRANSACTION
    /// ...`), which must run before anything takes a snapshot: in signed mode
    /// the tenant goes in after it.
    pub setup: bool,
    /// Whether executing it changes session state (re-inspected at each Bind).
    pub session: bool,
    /// Whether it cannot run inside a transaction block (VACUUM, ...): the
    /// tenant is not injected in front of it.
    pub no_block: bool,
}

impl Statement {
    /// The server-side statement name.
    pub fn server_name(&self) -> Vec<u8> {
        server_name(self.id)
    }
}

/// Id reserved for the proxy's own tenant statement (see [`tenant_statement`]).
pub const TENANT_STATEMENT_ID: u64 = u64::MAX;

/// Id reserved for the signed-mode carry statement (see [`carry_statement`]).
pub const CARRY_STATEMENT_ID: u64 = u64::MAX - 1;

/// Name of the statement a stand-in Parse tries (and fails) to create, so that
/// a refusal never disturbs the client's unnamed statement.
pub const REFUSED_NAME: &[u8] = b"pgtenant_refused";

/// The server-side name of statement `id`.
pub fn server_name(id: u64) -> Vec<u8> {
    if id == TENANT_STATEMENT_ID {
        return b"pgtenant_tenant".to_vec();
    }
    if id == CARRY_STATEMENT_ID {
        return b"pgtenant_carry".to_vec();
    }
    format!("pgtenant_{id}").into_bytes()
}

/// The statement that sets the tenant for the current transaction, with the
/// tenant (and in signed mode its proof) as bound parameters: prepared once
/// per server connection, so neither ever appears in any query text
/// (`pg_stat_activity`, logs).
pub fn tenant_statement(setting: &str, signed: bool) -> Statement {
    let mut text = format!("SELECT pg_catalog.set_config('{setting}', $1, true)");
    // Parameters of type text (OID 25).
    let types = if signed {
        text.push_str(&format!(", pg_catalog.set_config('{}', $2, true)", signing::PROOF_SETTING));
        Bytes::from_static(&[0, 2, 0, 0, 0, 25, 0, 0, 0, 25])
    } else {
        Bytes::from_static(&[0, 1, 0, 0, 0, 25])
    };
    Statement {
        id: TENANT_STATEMENT_ID,
        text: Bytes::from(text),
        types,
        tx: false,
        tx_end: false,
        setup: false,
        session: false,
        no_block: false,
    }
}

/// Signed mode: the statement that stores the tenant and its proof in
/// session-level settings, for a simple Query that starts more than one
/// transaction or sets a transaction up before its first other statement.
pub fn carry_statement() -> Statement {
    let text = format!(
        "SELECT pg_catalog.set_config('{}', $1, false), pg_catalog.set_config('{}', $2, false)",
        signing::CARRY_TENANT_SETTING,
        signing::CARRY_PROOF_SETTING
    );
    Statement {
        id: CARRY_STATEMENT_ID,
        text: Bytes::from(text),
        types: Bytes::from_static(&[0, 2, 0, 0, 0, 25, 0, 0, 0, 25]),
        tx: false,
        tx_end: false,
        setup: false,
        session: false,
        no_block: false,
    }
}

/// The portal the proxy's tenant statement runs in: named, so that it never
/// replaces the client's unnamed portal, and closed right after it ran.
pub const TENANT_PORTAL: &[u8] = b"pgtenant_tenant";

/// Appends Bind (text parameters), Execute and Close of statement `name` in
/// [`TENANT_PORTAL`]: three steps, each with a reply.
pub fn run_in_tenant_portal(name: &[u8], params: &[&[u8]], out: &mut BytesMut) {
    build::bind(out, TENANT_PORTAL, name, params);
    build::execute(out, TENANT_PORTAL);
    build::close_portal(out, TENANT_PORTAL);
}

/// Named statements one client may hold at once; a Parse beyond it is
/// refused (53400), so one client cannot grow the proxy's memory unbounded.
pub const MAX_CLIENT_STATEMENTS: usize = 10_000;

/// Distinct statement texts the process-wide registry remembers; beyond it,
/// the registry starts afresh (ids are never reused, so a text prepared
/// again just gets a new server-side name).
const MAX_REGISTERED: usize = 100_000;

/// Assigns ids to distinct (text, parameter types) pairs, process-wide.
/// Exact keys rather than hashes: two texts can never share a name.
#[derive(Default)]
pub struct Registry {
    ids: DashMap<(Bytes, Bytes), u64>,
    next: AtomicU64,
}

impl Registry {
    /// The id for this text and parameter types.
    pub fn id_for(&self, text: &Bytes, types: &Bytes) -> u64 {
        if let Some(id) = self.ids.get(&(text.clone(), types.clone())) {
            return *id;
        }
        if self.ids.len() >= MAX_REGISTERED {
            self.ids.clear();
        }
        *self.ids.entry((text.clone(), types.clone())).or_insert_with(|| self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// Texts remembered now (for tests).
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// One client's named statements, by the client's names.
#[derive(Default)]
pub struct ClientStatements {
    by_name: HashMap<Bytes, Arc<Statement>>,
}

impl ClientStatements {
    /// The statement a client name refers to.
    pub fn get(&self, name: &[u8]) -> Option<&Arc<Statement>> {
        self.by_name.get(name)
    }

    /// Records a statement under a client name.
    pub fn insert(&mut self, name: Bytes, stmt: Arc<Statement>) {
        self.by_name.insert(name, stmt);
    }

    /// Whether the client holds [`MAX_CLIENT_STATEMENTS`] names already.
    pub fn is_full(&self) -> bool {
        self.by_name.len() >= MAX_CLIENT_STATEMENTS
    }

    /// Forgets a client name.
    pub fn remove(&mut self, name: &[u8]) {
        self.by_name.remove(name);
    }

    /// Forgets every name bound to statement `id` (its Parse failed upstream).
    pub fn forget_id(&mut self, id: u64) {
        self.by_name.retain(|_, s| s.id != id);
    }

    /// Forgets everything (`DEALLOCATE ALL`, `DISCARD ALL`).
    pub fn clear(&mut self) {
        self.by_name.clear();
    }
}

/// Appends a copy of a Bind message with its statement name replaced.
/// Returns `None` when the message is malformed.
pub fn rename_bind(msg: &[u8], server_name: &[u8], out: &mut BytesMut) -> Option<()> {
    let body = msg.get(frame::HEADER_LEN..)?;
    let (portal, rest) = frame::cstr(body)?;
    let (_client_name, rest) = frame::cstr(rest)?;
    build::message(out, b'B', |b| {
        b.put_slice(portal);
        b.put_u8(0);
        b.put_slice(server_name);
        b.put_u8(0);
        b.put_slice(rest);
    });
    Some(())
}

/// Appends a Close of a statement by server name.
pub fn close_statement(server_name: &[u8], out: &mut BytesMut) {
    build::message(out, b'C', |b| {
        b.put_u8(b'S');
        b.put_slice(server_name);
        b.put_u8(0);
    });
}

/// Appends a Describe of a statement by server name.
pub fn describe_statement(server_name: &[u8], out: &mut BytesMut) {
    build::message(out, b'D', |b| {
        b.put_u8(b'S');
        b.put_slice(server_name);
        b.put_u8(0);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_is_bounded_and_never_reuses_an_id() {
        let r = Registry::default();
        let t = Bytes::new();
        let first = r.id_for(&Bytes::from_static(b"select 0"), &t);
        let mut last = first;
        for i in 1..=MAX_REGISTERED {
            last = r.id_for(&Bytes::from(format!("select {i}")), &t);
        }
        assert!(r.len() <= MAX_REGISTERED, "{} texts remembered", r.len());
        // The first text was forgotten with the rest; it comes back under a new id.
        let again = r.id_for(&Bytes::from_static(b"select 0"), &t);
        assert!(again > last && again != first, "{again} after {last}");
    }

    #[test]
    fn identical_text_shares_an_id() {
        let r = Registry::default();
        let (a, t) = (Bytes::from_static(b"select 1"), Bytes::from_static(b"\0\0"));
        let id = r.id_for(&a, &t);
        assert_eq!(r.id_for(&a, &t), id);
        assert_ne!(r.id_for(&Bytes::from_static(b"select 2"), &t), id);
        assert_ne!(r.id_for(&a, &Bytes::from_static(b"\0\x01\0\0\0\x17")), id);
    }

    #[test]
    fn bind_is_renamed_and_keeps_the_rest() {
        let mut msg = BytesMut::new();
        build::message(&mut msg, b'B', |b| b.put_slice(b"p\0s1\0\0\0\0\x01\0\0\0\x01x\0\0"));
        let mut out = BytesMut::new();
        rename_bind(&msg, b"pgtenant_7", &mut out).unwrap();
        assert_eq!(&out[5..], b"p\0pgtenant_7\0\0\0\0\x01\0\0\0\x01x\0\0");
        assert!(rename_bind(b"B\0\0\0\x05", b"x", &mut out).is_none());
    }
}
