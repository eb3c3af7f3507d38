//! The queue of replies a server connection still owes, and what to do with
//! each server message: forward it, drop it (a reply to the proxy's own
//! injected statement) or rewrite it (a refused statement's error, or an
//! error position). Modelled on PgBouncer's forward / skip / fake requests.

use std::collections::VecDeque;

use bytes::BytesMut;

use super::inject::{PositionMap, Refused, Role, STAND_IN_SQLSTATE};
use crate::wire::{build, error};

/// An extended-protocol request awaiting its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Parse: ParseComplete.
    Parse,
    /// Bind: BindComplete.
    Bind,
    /// Describe of a statement: ParameterDescription then RowDescription/NoData.
    DescribeStatement,
    /// Describe of a portal: RowDescription/NoData.
    DescribePortal,
    /// Execute: rows, then CommandComplete/EmptyQuery/PortalSuspended.
    Execute,
    /// Close: CloseComplete.
    Close,
}

impl Step {
    /// Whether `tag` is the last message of this step's reply.
    fn completed_by(self, tag: u8) -> bool {
        match self {
            Step::Parse => tag == b'1',
            Step::Bind => tag == b'2',
            Step::Close => tag == b'3',
            Step::DescribeStatement | Step::DescribePortal => matches!(tag, b'T' | b'n'),
            Step::Execute => matches!(tag, b'C' | b'I' | b's'),
        }
    }
}

/// Whose request an entry is, which decides the fate of its reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// The client's: forward.
    Client,
    /// The proxy's injection: drop.
    Proxy,
    /// A stand-in for a refused request: rewrite its error.
    StandIn(Refused),
    /// A Parse of proxy-named statement `id`: forward (or drop when
    /// `hidden`), and remember if it failed, since then the server lacks it.
    Prepare {
        /// Statement id.
        id: u64,
        /// Sent by the proxy, not the client.
        hidden: bool,
    },
    /// Not sent at all: the proxy answers with the step's completion message.
    Synthetic,
    /// A statement of the client's simple Query sent ahead as its own steps
    /// (signed mode): what a Query would show (rows, RowDescription, command
    /// tags, errors) is forwarded, the extended-protocol acknowledgements
    /// (ParseComplete, BindComplete, NoData) are not; error positions are
    /// shifted by `base` characters, where the statement starts in the Query.
    Early {
        /// Characters of the client's Query before this statement.
        base: usize,
    },
}

impl Owner {
    fn hidden(&self) -> bool {
        matches!(self, Owner::Proxy | Owner::Prepare { hidden: true, .. })
    }

    /// Whether a message of a step's reply stays with the proxy.
    fn drops(&self, tag: u8) -> bool {
        match self {
            Owner::Early { .. } => matches!(tag, b'1' | b'2' | b'3' | b'n'),
            other => other.hidden(),
        }
    }
}

/// A simple Query awaiting its replies, statement by statement.
#[derive(Debug)]
pub struct QueryPlan {
    /// Roles of the statements sent; empty when the text was forwarded unchanged.
    pub roles: Vec<Role>,
    /// Maps error positions to the client's text; `None` when unchanged.
    pub map: Option<PositionMap>,
    current: usize,
    /// The proxy sent extended-protocol steps ahead of this Query and a
    /// [`Pending::HiddenSync`] after it: when a step fails, the server skips
    /// the Query up to that Sync, whose ReadyForQuery then ends the Query.
    resync: bool,
}

impl QueryPlan {
    /// A plan for a Query with these statement roles.
    pub fn new(roles: Vec<Role>, map: Option<PositionMap>) -> Self {
        QueryPlan { roles, map, current: 0, resync: false }
    }

    /// Marks the Query as preceded by the proxy's own steps and followed by
    /// its Sync (see `resync`).
    pub fn resync_on_skip(mut self) -> Self {
        self.resync = true;
        self
    }

    fn role(&self) -> Option<&Role> {
        self.roles.get(self.current)
    }
}

/// One reply the server still owes.
#[derive(Debug)]
pub enum Pending {
    /// An extended-protocol request.
    Step(Step, Owner),
    /// Sync: ReadyForQuery.
    Sync,
    /// The proxy's Sync after a Query it sent steps ahead of (signed mode):
    /// its ReadyForQuery is dropped, unless a step failed and the server
    /// skipped the Query, when it stands for the Query's.
    HiddenSync {
        /// Forward the ReadyForQuery to the client.
        forward: bool,
    },
    /// A simple Query (or a refused function call): statements, then ReadyForQuery.
    Query(QueryPlan),
    /// A reply the proxy gives itself to a whole simple Query, ReadyForQuery
    /// included, sent when it reaches the front.
    Reply(BytesMut),
    /// The proxy's own simple Query (re-applying or reading settings): every
    /// reply is dropped; the first DataRow is kept when `capture` is set.
    Internal {
        /// Keep the first DataRow for [`Outstanding::take_captured`].
        capture: bool,
    },
}

/// What to do with one server message.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Pass the message on unchanged.
    Forward,
    /// Swallow it.
    Drop,
    /// Send this instead.
    Replace(BytesMut),
}

/// The reply queue of one attached server connection.
#[derive(Debug, Default)]
pub struct Outstanding {
    queue: VecDeque<Pending>,
    /// Sync or Query entries in the queue: each ends with a ReadyForQuery.
    units: usize,
    /// After an extended-protocol error with no Sync queued, the server
    /// ignores everything until the next Sync, so nothing else is owed.
    skipping: bool,
    /// Statement ids whose Parse failed or was skipped.
    unprepared: Vec<(u64, bool)>,
    /// The server is in COPY FROM STDIN mode, where it ignores Sync.
    copy_in: bool,
    /// The DataRow body kept by a capturing internal query.
    captured: Option<Vec<u8>>,
    /// An internal query failed: the server's settings are unknown.
    internal_failed: bool,
}

impl Outstanding {
    /// Records a request sent upstream.
    pub fn push(&mut self, p: Pending) {
        if self.skipping && !matches!(p, Pending::Sync | Pending::HiddenSync { .. }) {
            // The server ignores everything up to the next Sync: nothing is owed.
            if let Pending::Step(_, Owner::Prepare { id, hidden }) = p {
                self.unprepared.push((id, hidden));
            }
            return;
        }
        if self.copy_in && matches!(p, Pending::Sync | Pending::HiddenSync { .. }) {
            // PostgreSQL ignores Sync during COPY FROM STDIN: no reply is owed.
            return;
        }
        match p {
            Pending::Sync
            | Pending::HiddenSync { .. }
            | Pending::Query(_)
            | Pending::Internal { .. }
            | Pending::Reply(_) => {
                self.units += 1;
                self.skipping = false;
            }
            Pending::Step(..) => {}
        }
        self.queue.push_back(p);
    }

    /// The client ended a COPY FROM STDIN (CopyDone or CopyFail).
    pub fn copy_done(&mut self) {
        self.copy_in = false;
    }

    /// Whether the server is ignoring messages until the next Sync.
    pub fn is_skipping(&self) -> bool {
        self.skipping
    }

    /// Whether nothing is owed.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Number of ReadyForQuery messages still owed.
    pub fn units(&self) -> usize {
        self.units
    }

    /// Decides the fate of one server message (`tag`, `body`).
    pub fn on_message(&mut self, tag: u8, body: &[u8]) -> Action {
        if tag == b'G' {
            self.enter_copy_in();
        }
        match tag {
            // Asynchronous messages may arrive at any time.
            b'S' | b'A' => return Action::Forward,
            b'N' => return if self.front_is_hidden() { Action::Drop } else { Action::Forward },
            _ => {}
        }
        match self.queue.front_mut() {
            // A proxy reply at the front is always drained before server messages.
            None | Some(Pending::Reply(_)) => Action::Forward,
            Some(Pending::Sync) => {
                if tag == b'Z' {
                    self.pop_unit();
                }
                Action::Forward
            }
            Some(&mut Pending::HiddenSync { forward }) => {
                if tag == b'Z' {
                    self.pop_unit();
                }
                if forward {
                    Action::Forward
                } else {
                    Action::Drop
                }
            }
            Some(Pending::Internal { capture }) => {
                match tag {
                    b'D' if *capture && self.captured.is_none() => self.captured = Some(body.to_vec()),
                    b'E' => self.internal_failed = true,
                    b'Z' => self.pop_unit(),
                    _ => {}
                }
                Action::Drop
            }
            Some(Pending::Query(plan)) => {
                let action = query_reply(plan, tag, body);
                if tag == b'Z' {
                    self.pop_unit();
                }
                action
            }
            Some(Pending::Step(step, owner)) => {
                let (step, owner) = (*step, owner.clone());
                if tag == b'E' {
                    self.fail_to_sync();
                    return error_action(&owner, body, None);
                }
                if step.completed_by(tag) {
                    self.queue.pop_front();
                }
                if owner.drops(tag) {
                    Action::Drop
                } else {
                    Action::Forward
                }
            }
        }
    }

    /// Writes the replies the proxy gives itself while they are next in line.
    pub fn drain_synthetic(&mut self, out: &mut BytesMut) {
        loop {
            match self.queue.front() {
                Some(Pending::Step(step, Owner::Synthetic)) => {
                    let tag = if *step == Step::Close { b'3' } else { b'1' };
                    build::message(out, tag, |_| {});
                    self.queue.pop_front();
                }
                Some(Pending::Reply(reply)) => {
                    out.extend_from_slice(reply);
                    self.pop_unit();
                }
                _ => return,
            }
        }
    }

    /// The DataRow a capturing internal query returned, once.
    pub fn take_captured(&mut self) -> Option<Vec<u8>> {
        self.captured.take()
    }

    /// Whether an internal query failed since the last call.
    pub fn take_internal_failed(&mut self) -> bool {
        std::mem::take(&mut self.internal_failed)
    }

    /// Statement ids the server did not prepare after all, since the last call.
    pub fn take_unprepared(&mut self) -> Vec<(u64, bool)> {
        std::mem::take(&mut self.unprepared)
    }

    /// CopyInResponse: Syncs the client sent after the COPY's Execute (libpq
    /// and tokio-postgres send one) are ignored by the server, and so is any
    /// Sync until the client ends the copy.
    fn enter_copy_in(&mut self) {
        self.copy_in = true;
        let mut i = 1;
        while i < self.queue.len() {
            if matches!(self.queue[i], Pending::Sync | Pending::HiddenSync { .. }) {
                self.queue.remove(i);
                self.units -= 1;
            } else {
                i += 1;
            }
        }
    }

    fn front_is_hidden(&self) -> bool {
        match self.queue.front() {
            Some(Pending::Step(_, owner)) => owner.hidden(),
            Some(Pending::Query(plan)) => plan.role() == Some(&Role::Hidden),
            Some(Pending::Internal { .. }) => true,
            _ => false,
        }
    }

    fn pop_unit(&mut self) {
        self.queue.pop_front();
        self.units -= 1;
    }

    /// After an error the server skips every request up to the next Sync.
    fn fail_to_sync(&mut self) {
        // Every request up to the Sync, a simple Query included, gets no reply.
        loop {
            match self.queue.front() {
                None | Some(Pending::Sync) => break,
                Some(Pending::Step(_, owner)) => {
                    if let Owner::Prepare { id, hidden } = owner {
                        self.unprepared.push((*id, *hidden));
                    }
                    self.queue.pop_front();
                }
                Some(Pending::Query(plan)) if plan.resync => {
                    self.pop_unit();
                    if let Some(Pending::HiddenSync { forward }) = self.queue.front_mut() {
                        *forward = true;
                    }
                }
                Some(Pending::HiddenSync { .. }) => break,
                Some(_) => self.pop_unit(),
            }
        }
        if self.queue.is_empty() {
            self.skipping = true;
        }
    }
}

fn query_reply(plan: &mut QueryPlan, tag: u8, body: &[u8]) -> Action {
    let hidden = plan.role() == Some(&Role::Hidden);
    match tag {
        b'C' | b'I' => {
            plan.current += 1;
            if hidden {
                Action::Drop
            } else {
                Action::Forward
            }
        }
        b'E' => {
            let owner = match plan.role() {
                Some(Role::StandIn(r)) => Owner::StandIn(r.clone()),
                Some(Role::Hidden) => Owner::Proxy,
                _ => Owner::Client,
            };
            error_action(&owner, body, plan.map.as_ref())
        }
        b'Z' => Action::Forward,
        _ if hidden => Action::Drop,
        _ => Action::Forward,
    }
}

/// Rewrites a refused stand-in's error into the refusal, or an error position
/// into the client's text; anything else passes unchanged.
fn error_action(owner: &Owner, body: &[u8], map: Option<&PositionMap>) -> Action {
    let Some(fields) = error::fields(body) else { return Action::Forward };
    if let Owner::Early { base } = owner {
        let Some(p) = error::field(&fields, b'P').and_then(error::parse_usize) else { return Action::Forward };
        let mut out = BytesMut::new();
        error::write_error(&mut out, &fields, Some(base + p));
        return Action::Replace(out);
    }
    if let Owner::StandIn(refused) = owner {
        if error::field(&fields, b'C') == Some(STAND_IN_SQLSTATE) {
            crate::metrics::statement_refused(refused.kind);
            let mut out = BytesMut::new();
            build::error_response(&mut out, build::Severity::Error, refused.code, &refused.message, refused.hint);
            return Action::Replace(out);
        }
        return Action::Forward;
    }
    let (Some(map), Some(p)) = (map, error::field(&fields, b'P').and_then(error::parse_usize)) else {
        return Action::Forward;
    };
    let mut out = BytesMut::new();
    error::write_error(&mut out, &fields, Some(map.map(p)));
    Action::Replace(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(code: &str) -> Vec<u8> {
        format!("SERROR\0C{code}\0Mboom\0\0").into_bytes()
    }

    #[test]
    fn hidden_injection_replies_are_dropped() {
        let mut q = Outstanding::default();
        q.push(Pending::Step(Step::Parse, Owner::Proxy));
        q.push(Pending::Step(Step::Bind, Owner::Proxy));
        q.push(Pending::Step(Step::Execute, Owner::Proxy));
        q.push(Pending::Step(Step::Parse, Owner::Client));
        q.push(Pending::Sync);
        assert_eq!(q.on_message(b'1', b""), Action::Drop);
        assert_eq!(q.on_message(b'2', b""), Action::Drop);
        assert_eq!(q.on_message(b'N', b"SWARNING\0\0"), Action::Drop);
        assert_eq!(q.on_message(b'C', b"SET\0"), Action::Drop);
        assert_eq!(q.on_message(b'1', b""), Action::Forward);
        assert_eq!(q.units(), 1);
        assert_eq!(q.on_message(b'Z', b"I"), Action::Forward);
        assert!(q.is_empty());
        assert_eq!(q.units(), 0);
    }

    fn signed_query(q: &mut Outstanding) {
        for step in [Step::Bind, Step::Execute, Step::Close] {
            q.push(Pending::Step(step, Owner::Proxy));
        }
        q.push(Pending::Query(QueryPlan::new(Vec::new(), None).resync_on_skip()));
        q.push(Pending::HiddenSync { forward: false });
    }

    #[test]
    fn the_proxys_sync_after_a_query_is_dropped_when_the_query_ran() {
        let mut q = Outstanding::default();
        signed_query(&mut q);
        for tag in [b'2', b'D', b'C', b'3'] {
            assert_eq!(q.on_message(tag, b""), Action::Drop, "{}", tag as char);
        }
        for tag in [b'T', b'D', b'C'] {
            assert_eq!(q.on_message(tag, b""), Action::Forward);
        }
        assert_eq!(q.on_message(b'Z', b"I"), Action::Forward);
        assert_eq!(q.units(), 1);
        assert_eq!(q.on_message(b'Z', b"I"), Action::Drop);
        assert!(q.is_empty() && q.units() == 0);
    }

    #[test]
    fn a_failed_step_ahead_makes_the_proxys_sync_end_the_query() {
        let mut q = Outstanding::default();
        signed_query(&mut q);
        signed_query(&mut q);
        // The first Query is skipped by the server; its error and the Sync's
        // ReadyForQuery stand for it; the second Query runs normally.
        assert_eq!(q.on_message(b'E', &err("57014")), Action::Forward);
        assert_eq!(q.on_message(b'Z', b"I"), Action::Forward);
        assert_eq!(q.units(), 2);
        for tag in [b'2', b'D', b'C', b'3'] {
            assert_eq!(q.on_message(tag, b""), Action::Drop);
        }
        assert_eq!(q.on_message(b'C', b"SELECT 1\0"), Action::Forward);
        assert_eq!(q.on_message(b'Z', b"I"), Action::Forward);
        assert_eq!(q.on_message(b'Z', b"I"), Action::Drop);
        assert!(q.is_empty());
    }

    #[test]
    fn statements_sent_ahead_look_like_part_of_the_query() {
        let mut q = Outstanding::default();
        let early = Owner::Early { base: 10 };
        for step in [Step::Parse, Step::Bind, Step::DescribePortal, Step::Execute] {
            q.push(Pending::Step(step, early.clone()));
        }
        q.push(Pending::Step(Step::Parse, early.clone()));
        q.push(Pending::Query(QueryPlan::new(Vec::new(), None).resync_on_skip()));
        q.push(Pending::HiddenSync { forward: false });
        assert_eq!(q.on_message(b'1', b""), Action::Drop);
        assert_eq!(q.on_message(b'2', b""), Action::Drop);
        assert_eq!(q.on_message(b'n', b""), Action::Drop, "NoData never reaches a simple-Query client");
        assert_eq!(q.on_message(b'C', b"BEGIN\0"), Action::Forward);
        let Action::Replace(bytes) = q.on_message(b'E', b"SERROR\0C42601\0Mbad\0P3\0\0") else {
            panic!("position not rewritten")
        };
        assert!(bytes.windows(4).any(|w| w == b"P13\0"), "{bytes:?}");
        assert_eq!(q.on_message(b'Z', b"I"), Action::Forward);
        assert!(q.is_empty());
    }

    #[test]
    fn error_skips_to_sync() {
        let mut q = Outstanding::default();
        q.push(Pending::Step(Step::Parse, Owner::Client));
        q.push(Pending::Step(Step::Bind, Owner::Client));
        q.push(Pending::Step(Step::Execute, Owner::Client));
        q.push(Pending::Sync);
        q.push(Pending::Step(Step::Parse, Owner::Client));
        q.push(Pending::Sync);
        assert_eq!(q.on_message(b'E', &err("42601")), Action::Forward);
        assert_eq!(q.on_message(b'Z', b"I"), Action::Forward);
        assert_eq!(q.on_message(b'1', b""), Action::Forward);
        assert_eq!(q.on_message(b'Z', b"I"), Action::Forward);
        assert!(q.is_empty());
    }

    #[test]
    fn error_without_sync_skips_later_steps() {
        let mut q = Outstanding::default();
        q.push(Pending::Step(Step::Execute, Owner::Client));
        assert_eq!(q.on_message(b'E', &err("22012")), Action::Forward);
        q.push(Pending::Step(Step::DescribePortal, Owner::Client));
        assert!(q.is_empty());
        q.push(Pending::Sync);
        assert_eq!(q.units(), 1);
    }

    #[test]
    fn stand_in_error_becomes_refusal() {
        let mut q = Outstanding::default();
        let refused = Refused::privilege("no".into());
        q.push(Pending::Step(Step::Parse, Owner::StandIn(refused)));
        q.push(Pending::Sync);
        let Action::Replace(bytes) = q.on_message(b'E', &err("22P02")) else { panic!("not replaced") };
        let f = error::fields(&bytes[5..]).unwrap();
        assert_eq!(error::field(&f, b'C'), Some(&b"42501"[..]));
        assert_eq!(error::field(&f, b'M'), Some(&b"no"[..]));
    }

    #[test]
    fn query_counts_statements() {
        let mut q = Outstanding::default();
        let roles = vec![Role::Hidden, Role::Client, Role::Hidden, Role::Client];
        q.push(Pending::Query(QueryPlan::new(roles, None)));
        assert_eq!(q.on_message(b'C', b"SET\0"), Action::Drop);
        assert_eq!(q.on_message(b'C', b"COMMIT\0"), Action::Forward);
        assert_eq!(q.on_message(b'N', b"SWARNING\0\0"), Action::Drop);
        assert_eq!(q.on_message(b'C', b"SET\0"), Action::Drop);
        assert_eq!(q.on_message(b'T', b""), Action::Forward);
        assert_eq!(q.on_message(b'D', b""), Action::Forward);
        assert_eq!(q.on_message(b'C', b"SELECT 1\0"), Action::Forward);
        assert_eq!(q.on_message(b'Z', b"I"), Action::Forward);
        assert!(q.is_empty());
    }
}

#[cfg(test)]
mod prepare_tests {
    use super::*;

    #[test]
    fn synthetic_replies_wait_their_turn() {
        let mut q = Outstanding::default();
        q.push(Pending::Step(Step::Bind, Owner::Client));
        q.push(Pending::Step(Step::Parse, Owner::Synthetic));
        q.push(Pending::Step(Step::Close, Owner::Synthetic));
        q.push(Pending::Sync);
        let mut out = BytesMut::new();
        q.drain_synthetic(&mut out);
        assert!(out.is_empty());
        assert_eq!(q.on_message(b'2', b""), Action::Forward);
        q.drain_synthetic(&mut out);
        assert_eq!(&out[..], b"1\0\0\0\x043\0\0\0\x04");
        assert_eq!(q.on_message(b'Z', b"I"), Action::Forward);
    }

    #[test]
    fn failed_and_skipped_prepares_are_reported() {
        let mut q = Outstanding::default();
        q.push(Pending::Step(Step::Parse, Owner::Prepare { id: 1, hidden: true }));
        q.push(Pending::Step(Step::Parse, Owner::Prepare { id: 2, hidden: false }));
        q.push(Pending::Sync);
        assert_eq!(q.on_message(b'E', b"SERROR\0C42P01\0Mno table\0\0"), Action::Forward);
        assert_eq!(q.take_unprepared(), vec![(1, true), (2, false)]);
        assert!(q.take_unprepared().is_empty());
    }
}
