//! Where the tenant goes into a simple Query, and how refused statements are
//! replaced. Pure: the session decides *whether* to inject, this module
//! decides *how*, and maps error positions back to the client's own text.
//!
//! A refused statement is not simply dropped: it is replaced by a stand-in
//! that fails in PostgreSQL at the same point, so the server's transaction
//! state (aborted block, skipped rest of a multi-statement query) is exactly
//! what a real error there would leave. The stand-in's error is then
//! rewritten into the refusal the client should see.

use bytes::Bytes;

use crate::auth::tenant::TenantId;
use crate::sql::inspect::{Inspection, SessionEffect, Statement, TxControl};

/// A statement that always fails with SQLSTATE 22P02, with no side effects.
/// Its text explains itself should the error ever reach a client unrewritten.
pub const STAND_IN: &[u8] = b"SELECT CAST('pgtenant: statement refused' AS pg_catalog.int4)";

/// SQLSTATE raised by [`STAND_IN`].
pub const STAND_IN_SQLSTATE: &[u8] = b"22P02";

/// The error a client sees in place of a stand-in's error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// What kind of statement it was, as a metrics label.
    pub kind: &'static str,
    /// SQLSTATE to report.
    pub code: &'static str,
    /// Message to report.
    pub message: String,
    /// Hint to report.
    pub hint: Option<&'static str>,
}

impl Refused {
    /// A refusal of a statement that tries to change a protected setting.
    pub fn privilege(message: String) -> Refused {
        let hint = "the tenant comes from your token; connect with another token to act as another tenant";
        Refused { kind: "tenant_setting", code: "42501", message, hint: Some(hint) }
    }

    /// Session state that cannot work in transaction pooling.
    pub fn pooling(what: &str, hint: &'static str) -> Refused {
        Refused {
            kind: "session_state",
            code: "0A000",
            message: format!("{what} is not supported through pgtenant (transaction pooling)"),
            hint: Some(hint),
        }
    }

    /// A statement the proxy could not lex: PostgreSQL would reject it too.
    pub fn unparsable() -> Refused {
        Refused {
            kind: "unparsable",
            code: "42601",
            message: "pgtenant could not parse this statement (unterminated quote, comment or dollar quote)".into(),
            hint: None,
        }
    }
}

/// What one statement of the text sent upstream is, for reply filtering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The proxy's own tenant statement: its replies are dropped.
    Hidden,
    /// The client's statement: its replies are forwarded.
    Client,
    /// A stand-in for a refused statement: its error is rewritten.
    StandIn(Refused),
}

/// One change made to the client's text: `orig_len` bytes at `orig_start`
/// became `new_len` bytes at `new_start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Edit {
    new_start: usize,
    new_len: usize,
    orig_start: usize,
    orig_len: usize,
}

/// A Query text rewritten for upstream.
#[derive(Debug, Clone)]
pub struct Rewrite {
    /// The text to send.
    pub text: Vec<u8>,
    /// One role per statement of `text`, in order.
    pub roles: Vec<Role>,
    map: PositionMap,
}

/// Maps character positions in the sent text back to the client's text.
#[derive(Debug, Clone)]
pub struct PositionMap {
    edits: Vec<Edit>,
    sent: Bytes,
    orig: Bytes,
    /// Characters of the client's text before `orig` (when a signed-mode
    /// Query was split, `orig` is only its tail).
    base: usize,
}

/// The simple-protocol tenant statement: `SET LOCAL <setting> = '<tenant>'`.
/// Quoting is safe: the setting name is validated by the configuration and
/// tenant ids are uuids or `[A-Za-z0-9_.:@-]`, never a quote.
pub fn set_local(setting: &str, tenant: &TenantId) -> Vec<u8> {
    format!("SET LOCAL {setting} = '{}'", tenant.as_str()).into_bytes()
}

/// Why a statement must not run, if it must not: it changes a protected
/// setting (42501), or it creates session state that would silently vanish
/// when the client's next transaction runs on another server connection
/// (0A000). Temp tables are allowed: a later use fails loudly, and the
/// server connection is closed rather than pooled.
pub fn refusal(st: &Statement) -> Option<Refused> {
    if let Some(r) = &st.refusal {
        return Some(Refused::privilege(r.message()));
    }
    // Upstream, the only SQL-level prepared statements are the proxy's own.
    if st.executes {
        return Some(Refused::pooling("EXECUTE of an SQL prepared statement", "use your driver's prepared statements"));
    }
    if let Some(SessionEffect::Deallocate { name: Some(name) }) = &st.session {
        let message = format!("prepared statement \"{name}\" does not exist");
        return Some(Refused { kind: "unknown_statement", code: "26000", message, hint: None });
    }
    let (what, hint) = match st.session.as_ref()? {
        SessionEffect::Prepare { .. } => ("SQL PREPARE", "use your driver's protocol-level prepared statements"),
        SessionEffect::Listen => ("LISTEN", "connect to PostgreSQL directly to receive notifications"),
        SessionEffect::DeclareWithHold => ("DECLARE ... WITH HOLD", "use a cursor inside a transaction"),
        SessionEffect::AdvisoryLock => {
            ("a session-level advisory lock", "use pg_advisory_xact_lock, which ends with the transaction")
        }
        _ => return None,
    };
    Some(Refused::pooling(what, hint))
}

/// Rewrites a simple Query: the tenant statement first when `inject`, after
/// every COMMIT/ROLLBACK that is followed by more statements (they run in a
/// new transaction), after every `AND CHAIN`; stand-ins for refused
/// statements. Returns `None` when the text can be forwarded unchanged.
///
/// With no `tenant_stmt` (signed mode, where the tenant only travels as a
/// bound parameter) only the stand-ins are made; the caller has split the
/// query so that no tenant is needed inside it (see [`plan_signed`]).
pub fn rewrite_query(sql: &Bytes, insp: &Inspection, tenant_stmt: Option<&[u8]>, inject: bool) -> Option<Rewrite> {
    let inject = inject && tenant_stmt.is_some();
    let tenant_stmt = tenant_stmt.unwrap_or_default();
    if insp.lex_error {
        return Some(whole_stand_in(sql, tenant_stmt, inject));
    }
    let reinjects = |i: usize, s: &Statement| {
        !tenant_stmt.is_empty() && ends_transaction_before_more(s.tx, i + 1 == insp.statements.len())
    };
    let needs_edit = inject
        || insp.statements.iter().any(|s| refusal(s).is_some())
        || insp.statements.iter().enumerate().any(|(i, s)| reinjects(i, s));
    if !needs_edit {
        return None;
    }
    let mut b = Builder::new(sql);
    if inject {
        b.insert(0, &[tenant_stmt, b"; "].concat(), Role::Hidden);
    }
    for (i, st) in insp.statements.iter().enumerate() {
        if let Some(r) = refusal(st) {
            b.replace(st.span.clone(), STAND_IN, Role::StandIn(r));
            continue;
        }
        b.roles.push(Role::Client);
        if reinjects(i, st) {
            b.insert(st.span.end, &[b"; ", tenant_stmt].concat(), Role::Hidden);
        }
    }
    Some(b.finish())
}

/// Whether a statement can run before the signed-mode tenant statement of
/// its transaction: transaction setup (`BEGIN ISOLATION LEVEL ...`, `SET
/// TRANSACTION ...`), which fails (25001) once the transaction has taken a
/// snapshot, as the tenant statement (a `SELECT`) does, and anything else that
/// takes no snapshot and needs no tenant (`SET`, `SHOW`, `LOCK`, ...),
/// which PostgreSQL lets run ahead of setup statements. The tenant goes in
/// right before the first other statement.
pub fn is_setup(st: &Statement) -> bool {
    if st.refusal.is_some() {
        return false;
    }
    st.snapshot_free
        || st.tx == TxControl::Begin
        || matches!(&st.session, Some(SessionEffect::Set { name, .. })
            if name == "transaction" || name.starts_with("transaction_"))
}

/// Whether a statement on its own, outside a transaction, needs no tenant:
/// it takes no snapshot, reads no tenant data and opens no block.
pub fn needs_no_tenant(st: &Statement) -> bool {
    st.refusal.is_none() && st.snapshot_free && st.tx != TxControl::Begin
}

/// Whether a statement looks like `COPY ... FROM STDIN` (erring towards yes).
pub fn copies_from_client(sql: &[u8], st: &Statement) -> bool {
    let text = String::from_utf8_lossy(&sql[st.span.clone()]).to_ascii_lowercase();
    let words: Vec<&str> = text.split(|c: char| c.is_ascii_whitespace() || c == '(' || c == ')').collect();
    words.first() == Some(&"copy") && words.windows(2).any(|w| w == ["from", "stdin"])
}

/// One step of a signed-mode simple Query sent ahead of its last part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// The bound tenant statement.
    Tenant,
    /// Statement `i` of the inspection, run on its own (Parse/Bind/Describe/Execute).
    Statement(usize),
}

/// How a simple Query is sent in signed mode, where the tenant can only be set
/// by a bound (extended-protocol) statement, never inside a Query text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPlan {
    /// Steps before the Query, in order. Statements go here only when a new
    /// transaction must get its tenant after them (after a leading `BEGIN ...`
    /// or a `COMMIT` followed by more statements).
    pub early: Vec<Piece>,
    /// Index of the first statement of the Query that ends the message; equal
    /// to the number of statements when all of them went early.
    pub tail: usize,
    /// The tenant statement goes right before the tail Query.
    pub tenant_before_tail: bool,
    /// A transaction is left open (or chained) without a tenant yet: the next
    /// statement that is not transaction setup must get it.
    pub pending: bool,
    /// The statements that need the tenant right before them, in order.
    pub points: Vec<usize>,
}

impl SignedPlan {
    /// Whether the tenant is needed somewhere other than before the first
    /// statement, so the Query cannot simply follow the bound tenant statement.
    pub fn splits(&self) -> bool {
        !self.early.is_empty()
    }
}

/// Plans a signed-mode Query. `needs_tenant`: the Query starts a transaction
/// (or one was started without a tenant yet). Only setup statements may run
/// before the tenant statement of their transaction; every other statement
/// runs after it. Statements before the last injection point are sent as
/// their own extended-protocol steps, so that an error among them still
/// skips everything after it, as in one Query.
pub fn plan_signed(insp: &Inspection, needs_tenant: bool) -> SignedPlan {
    if insp.lex_error {
        // The whole text becomes one failing stand-in: nothing runs that needs a tenant.
        return SignedPlan {
            early: Vec::new(),
            tail: 0,
            tenant_before_tail: false,
            pending: false,
            points: Vec::new(),
        };
    }
    let n = insp.statements.len();
    let mut points = Vec::new();
    let mut need = needs_tenant;
    for (i, st) in insp.statements.iter().enumerate() {
        if need && !is_setup(st) {
            points.push(i);
            need = false;
        }
        // After ROLLBACK TO a savepoint older than the tenant, the tenant is gone.
        if ends_transaction_before_more(st.tx, i + 1 == n) || st.rollback_to {
            need = true;
        }
    }
    let Some(&last) = points.last() else {
        // Nothing needs a tenant now (or everything is setup): one plain Query.
        return SignedPlan { early: Vec::new(), tail: 0, tenant_before_tail: false, pending: need, points };
    };
    let mut early = Vec::new();
    for i in 0..last {
        if points.contains(&i) {
            early.push(Piece::Tenant);
        }
        early.push(Piece::Statement(i));
    }
    SignedPlan { early, tail: last, tenant_before_tail: true, pending: need, points }
}

/// Signed mode: the tenant statement used *inside* a Query text. It copies the
/// tenant and proof that [`crate::session::prepared::carry_statement`] stored
/// (as bound parameters) into the transaction-local settings, so neither ever
/// appears in the text; `current_setting` without `missing_ok` makes a missing
/// carry an error, never a silent empty tenant.
pub fn copy_statement(setting: &str) -> Vec<u8> {
    use crate::auth::signing::{CARRY_PROOF_SETTING, CARRY_TENANT_SETTING, PROOF_SETTING};
    format!(
        "SELECT pg_catalog.set_config('{setting}', pg_catalog.current_setting('{CARRY_TENANT_SETTING}'), true), \
         pg_catalog.set_config('{PROOF_SETTING}', pg_catalog.current_setting('{CARRY_PROOF_SETTING}'), true)"
    )
    .into_bytes()
}

/// Empties the carried tenant and proof, run on its own before the server
/// connection goes back to the pool: outside any transaction block, so no
/// later rollback can bring them back.
pub const CLEAR_CARRY: &str = "SELECT pg_catalog.set_config('pgtenant.carry_tenant', '', false), \
     pg_catalog.set_config('pgtenant.carry_proof', '', false)";

/// Rewrites a Query with `tenant_stmt` right before each statement in
/// `points` (and stand-ins for refused statements): one Query, so PostgreSQL
/// still parses the whole text before running any of it.
pub fn rewrite_at(sql: &Bytes, insp: &Inspection, points: &[usize], tenant_stmt: &[u8]) -> Rewrite {
    let mut b = Builder::new(sql);
    for (i, st) in insp.statements.iter().enumerate() {
        if points.contains(&i) {
            b.insert(st.span.start, &[tenant_stmt, b"; "].concat(), Role::Hidden);
        }
        match refusal(st) {
            Some(r) => b.replace(st.span.clone(), STAND_IN, Role::StandIn(r)),
            None => b.roles.push(Role::Client),
        }
    }
    b.finish()
}

/// Whether the tenant must be set again right after this statement.
fn ends_transaction_before_more(tx: TxControl, last: bool) -> bool {
    match tx {
        TxControl::End => !last,
        TxControl::EndAndChain => true,
        _ => false,
    }
}

fn whole_stand_in(sql: &Bytes, tenant_stmt: &[u8], inject: bool) -> Rewrite {
    let mut b = Builder::new(sql);
    if inject {
        b.insert(0, &[tenant_stmt, b"; "].concat(), Role::Hidden);
    }
    b.replace(0..sql.len(), STAND_IN, Role::StandIn(Refused::unparsable()));
    b.finish()
}

struct Builder<'a> {
    orig: &'a Bytes,
    out: Vec<u8>,
    copied: usize,
    edits: Vec<Edit>,
    roles: Vec<Role>,
}

impl<'a> Builder<'a> {
    fn new(orig: &'a Bytes) -> Self {
        Builder { orig, out: Vec::with_capacity(orig.len() + 96), copied: 0, edits: Vec::new(), roles: Vec::new() }
    }

    fn copy_to(&mut self, at: usize) {
        self.out.extend_from_slice(&self.orig[self.copied..at]);
        self.copied = at;
    }

    fn insert(&mut self, at: usize, text: &[u8], role: Role) {
        self.replace(at..at, text, role);
    }

    fn replace(&mut self, range: std::ops::Range<usize>, text: &[u8], role: Role) {
        self.copy_to(range.start);
        let edit =
            Edit { new_start: self.out.len(), new_len: text.len(), orig_start: range.start, orig_len: range.len() };
        self.out.extend_from_slice(text);
        self.copied = range.end;
        self.edits.push(edit);
        self.roles.push(role);
    }

    fn finish(mut self) -> Rewrite {
        self.copy_to(self.orig.len());
        let sent = Bytes::from(self.out);
        let map = PositionMap { edits: self.edits, sent: sent.clone(), orig: self.orig.clone(), base: 0 };
        Rewrite { text: sent.to_vec(), roles: self.roles, map }
    }
}

impl Rewrite {
    /// The position map for errors of this text.
    pub fn into_map(self) -> PositionMap {
        self.map
    }
}

impl PositionMap {
    /// The map of a text sent unchanged.
    pub fn unchanged(text: Bytes) -> PositionMap {
        PositionMap { edits: Vec::new(), sent: text.clone(), orig: text, base: 0 }
    }

    /// The same map for a text that starts after `prefix` in the client's text.
    pub fn after(mut self, prefix: &[u8]) -> PositionMap {
        self.base = char_count(prefix);
        self
    }

    /// Maps a 1-based character position in the sent text to the client's
    /// text. A position inside inserted text maps to where it was inserted.
    pub fn map(&self, position: usize) -> usize {
        self.base + self.map_in_orig(position)
    }

    fn map_in_orig(&self, position: usize) -> usize {
        let sent_byte = byte_offset(&self.sent, position.saturating_sub(1));
        let mut shift: isize = 0;
        for e in &self.edits {
            if sent_byte < e.new_start {
                break;
            }
            if sent_byte < e.new_start + e.new_len {
                return char_count(&self.orig[..e.orig_start]) + 1;
            }
            shift += e.new_len as isize - e.orig_len as isize;
        }
        let orig_byte = (sent_byte as isize - shift).clamp(0, self.orig.len() as isize) as usize;
        char_count(&self.orig[..orig_byte]) + 1
    }
}

/// Byte offset of the `chars`-th character (UTF-8; other encodings count bytes
/// that are not UTF-8 continuation bytes, which is exact for ASCII).
fn byte_offset(text: &[u8], chars: usize) -> usize {
    let mut seen = 0;
    for (i, &b) in text.iter().enumerate() {
        if b & 0xC0 != 0x80 {
            if seen == chars {
                return i;
            }
            seen += 1;
        }
    }
    text.len()
}

/// Characters in `text` (UTF-8; bytes for other encodings, as [`byte_offset`]).
pub fn char_count(text: &[u8]) -> usize {
    text.iter().filter(|&&b| b & 0xC0 != 0x80).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::inspect::Inspector;

    const SET: &[u8] = b"SET LOCAL app.current_tenant_id = 't'";

    fn rewrite(sql: &str, inject: bool) -> Option<Rewrite> {
        let sql = Bytes::copy_from_slice(sql.as_bytes());
        let insp = Inspector::new("app.current_tenant_id").inspect(&sql, true);
        rewrite_query(&sql, &insp, Some(SET), inject)
    }

    fn plan(sql: &str, needs_tenant: bool) -> SignedPlan {
        plan_signed(&Inspector::new("app.current_tenant_id").inspect(sql.as_bytes(), true), needs_tenant)
    }

    #[test]
    fn signed_plain_query_gets_the_tenant_in_front() {
        let p = plan("SELECT 1; SELECT 2", true);
        assert_eq!((p.splits(), p.pending, p.points), (false, false, vec![0]));
        let inside = plan("SELECT 1", false);
        assert_eq!((inside.points, inside.tenant_before_tail, inside.pending), (vec![], false, false));
    }

    #[test]
    fn signed_setup_statements_run_before_the_tenant() {
        let p = plan("BEGIN ISOLATION LEVEL SERIALIZABLE; SET TRANSACTION READ ONLY; SELECT 1; SELECT 2", true);
        let early = vec![Piece::Statement(0), Piece::Statement(1)];
        assert_eq!(p, SignedPlan { early, tail: 2, tenant_before_tail: true, pending: false, points: vec![2] });
        // A Query of setup statements only leaves the tenant for later.
        let alone = plan("BEGIN ISOLATION LEVEL REPEATABLE READ", true);
        assert_eq!((alone.points, alone.tenant_before_tail, alone.pending), (vec![], false, true));
        assert!(!plan("BEGIN", false).pending, "inside a transaction that has its tenant");
    }

    #[test]
    fn signed_commit_followed_by_more_splits_the_query() {
        let p = plan("INSERT INTO t VALUES (1); COMMIT; BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT 1", true);
        let early = vec![Piece::Tenant, Piece::Statement(0), Piece::Statement(1), Piece::Statement(2)];
        assert_eq!(p, SignedPlan { early, tail: 3, tenant_before_tail: true, pending: false, points: vec![0, 3] });
        let chain = plan("SELECT 1; COMMIT AND CHAIN", true);
        assert_eq!((chain.splits(), chain.pending, chain.points), (false, true, vec![0]));
        let trailing = plan("SELECT 1; COMMIT", true);
        assert!(!trailing.pending && trailing.early.is_empty());
    }

    #[test]
    fn signed_split_queries_copy_the_carried_tenant_inside_the_text() {
        let sql = Bytes::from_static(
            b"BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT 1; COMMIT; SET app.current_tenant_id = 'b'",
        );
        let insp = insp_of(std::str::from_utf8(&sql).unwrap());
        let p = plan_signed(&insp, true);
        assert_eq!(p.points, vec![1, 3]);
        let r = rewrite_at(&sql, &insp, &p.points, b"COPY");
        let expected = format!(
            "BEGIN ISOLATION LEVEL SERIALIZABLE; COPY; SELECT 1; COMMIT; COPY; {}",
            String::from_utf8_lossy(STAND_IN)
        );
        assert_eq!(text(&r), expected);
        assert!(matches!(
            r.roles.as_slice(),
            [Role::Client, Role::Hidden, Role::Client, Role::Client, Role::Hidden, Role::StandIn(_)]
        ));
        let copy = String::from_utf8(copy_statement("app.current_tenant_id")).unwrap();
        assert!(copy.contains("current_setting('pgtenant.carry_proof')") && !copy.contains('$'), "{copy}");
    }

    #[test]
    fn signed_tenant_is_set_again_after_rollback_to_a_savepoint() {
        let p = plan("SAVEPOINT s; SELECT 1; ROLLBACK TO SAVEPOINT s; SELECT 2", true);
        assert_eq!(p.points, vec![1, 3]);
        assert!(plan("SELECT 1; ROLLBACK TO s", false).pending);
        assert!(!plan("SELECT 1; ROLLBACK", false).pending);
    }

    #[test]
    fn signed_unlexable_text_plans_nothing() {
        let p = plan("SELECT 1; COMMIT; SELECT 'unterminated", true);
        assert_eq!((p.points, p.tenant_before_tail, p.pending), (vec![], false, false));
    }

    #[test]
    fn signed_rewrite_never_inlines_the_tenant() {
        let sql = Bytes::from_static(b"SELECT 1; COMMIT; SET app.current_tenant_id = 'b'");
        let insp = Inspector::new("app.current_tenant_id").inspect(&sql, true);
        let r = rewrite_query(&sql, &insp, None, true).unwrap();
        assert!(!text(&r).contains("SET LOCAL"), "{}", text(&r));
        assert!(matches!(r.roles.as_slice(), [Role::Client, Role::Client, Role::StandIn(_)]));
        assert!(rewrite_query(&Bytes::from_static(b"SELECT 1"), &insp_of("SELECT 1"), None, true).is_none());
    }

    #[test]
    fn copy_from_the_client_is_recognised() {
        let sql = "COPY t (a) FROM\nSTDIN; copy t to stdout; COPY t FROM '/tmp/x'";
        let insp = insp_of(sql);
        let found: Vec<bool> = insp.statements.iter().map(|st| copies_from_client(sql.as_bytes(), st)).collect();
        assert_eq!(found, vec![true, false, false]);
    }

    fn insp_of(sql: &str) -> Inspection {
        Inspector::new("app.current_tenant_id").inspect(sql.as_bytes(), true)
    }

    fn text(r: &Rewrite) -> String {
        String::from_utf8(r.text.clone()).unwrap()
    }

    #[test]
    fn plain_query_gets_prefix() {
        let r = rewrite("SELECT 1", true).unwrap();
        assert_eq!(text(&r), "SET LOCAL app.current_tenant_id = 't'; SELECT 1");
        assert_eq!(r.roles, vec![Role::Hidden, Role::Client]);
    }

    #[test]
    fn unchanged_inside_a_block() {
        assert!(rewrite("SELECT 1; SELECT 2", false).is_none());
    }

    #[test]
    fn commit_followed_by_more_gets_tenant_again() {
        let r = rewrite("INSERT INTO t VALUES (1); COMMIT; SELECT 1", true).unwrap();
        assert_eq!(
            text(&r),
            "SET LOCAL app.current_tenant_id = 't'; INSERT INTO t VALUES (1); COMMIT; SET LOCAL app.current_tenant_id = 't'; SELECT 1"
        );
        assert_eq!(r.roles, vec![Role::Hidden, Role::Client, Role::Client, Role::Hidden, Role::Client]);
        assert!(rewrite("SELECT 1; COMMIT", false).is_none());
        let chain = rewrite("COMMIT AND CHAIN", false).unwrap();
        assert_eq!(text(&chain), "COMMIT AND CHAIN; SET LOCAL app.current_tenant_id = 't'");
    }

    #[test]
    fn refused_statement_becomes_stand_in() {
        let r = rewrite("SELECT 1; SET app.current_tenant_id = 'b'; SELECT 2", false).unwrap();
        let expected = format!("SELECT 1; {}; SELECT 2", String::from_utf8_lossy(STAND_IN));
        assert_eq!(text(&r), expected);
        assert!(
            matches!(&r.roles[1], Role::StandIn(x) if x.code == "42501" && x.message.contains("app.current_tenant_id"))
        );
    }

    #[test]
    fn positions_map_back_to_client_text() {
        let r = rewrite("SELECT 1; SELEC 2", true).unwrap();
        let sent = text(&r);
        let at = sent.find("SELEC 2").unwrap() + 1;
        assert_eq!(r.into_map().map(at), "SELECT 1; SELEC 2".find("SELEC 2").unwrap() + 1);
    }

    #[test]
    fn positions_count_characters_not_bytes() {
        let r = rewrite("SELECT 'é'; SELEC 2", true).unwrap();
        let sent = text(&r);
        let at =
            sent.chars().position(|_| true).map(|_| sent[..sent.find("SELEC 2").unwrap()].chars().count() + 1).unwrap();
        assert_eq!(r.into_map().map(at), "SELECT 'é'; SELEC 2".chars().count() - "SELEC 2".len() + 1);
    }

    #[test]
    fn position_inside_insert_maps_to_insertion_point() {
        let r = rewrite("COMMIT; SELECT 1", false).unwrap();
        let sent = text(&r);
        let inside = sent.find("SET LOCAL").unwrap() + 3;
        assert_eq!(r.into_map().map(inside), "COMMIT".len() + 1);
    }

    #[test]
    fn session_state_that_cannot_follow_is_refused() {
        for sql in [
            "PREPARE p AS SELECT 1",
            "LISTEN ch",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "SELECT pg_advisory_lock(1)",
        ] {
            let r = rewrite(sql, false).unwrap();
            assert!(matches!(&r.roles[0], Role::StandIn(x) if x.code == "0A000"), "{sql}");
        }
        assert!(rewrite("SELECT pg_advisory_xact_lock(1)", false).is_none());
        assert!(rewrite("CREATE TEMP TABLE t (x int)", false).is_none());
    }

    #[test]
    fn unlexable_text_is_replaced_whole() {
        let r = rewrite("SELECT 'unterminated", true).unwrap();
        assert_eq!(r.roles.len(), 2);
        assert!(matches!(&r.roles[1], Role::StandIn(x) if x.code == "42601"));
    }
}
