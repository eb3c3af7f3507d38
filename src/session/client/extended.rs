//! The extended query protocol: Parse/Bind/Describe/Close/Sync, named
//! statements across server connections, and the tenant in front of each
//! extended-protocol transaction.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::{Session, IDLE};
use crate::session::inject::{self, Refused};
use crate::session::outstanding::{Owner, Pending, Step};
use crate::session::params;
use crate::session::prepared::{self, Statement};
use crate::session::Fatal;
use crate::sql::inspect::{Inspection, SessionEffect, TxControl};
use crate::wire::{build, frame};

/// What the first step of an extended-protocol unit runs, which decides how
/// the tenant is injected in front of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum First {
    /// Anything else: the bound tenant statement.
    Plain,
    /// Transaction control: `SET LOCAL` (plain mode), the bound statement (signed).
    TxControl,
    /// Transaction setup (`BEGIN ISOLATION LEVEL ...`): as `TxControl` in plain
    /// mode; in signed mode the tenant waits for the next other step.
    Setup,
    /// A statement that cannot run in a transaction block: nothing.
    NoBlock,
}

impl First {
    fn of(stmt: &Statement) -> First {
        if stmt.no_block {
            First::NoBlock
        } else if stmt.setup {
            First::Setup
        } else if stmt.tx {
            First::TxControl
        } else {
            First::Plain
        }
    }
}

impl Session {
    pub(super) fn on_parse(&mut self, msg: Bytes) -> Result<(), Fatal> {
        let (name, sql, types) = parse_fields(&msg).ok_or_else(|| Fatal::new("08P01", "invalid Parse message"))?;
        let insp = self.shared.inspector.inspect(&sql, self.standard_conforming_strings);
        let mut stmt = statement(&insp, sql, types);
        self.begin_step(First::of(&stmt));
        self.unit_tx |= stmt.tx;
        self.note_deallocation(&insp);
        self.note_session_effects(&insp, &stmt.text);
        let refusal =
            if insp.lex_error { Some(Refused::unparsable()) } else { insp.statements.iter().find_map(inject::refusal) };
        if let Some(r) = refusal {
            if name.is_empty() {
                // PostgreSQL drops the unnamed statement even when its Parse fails.
                self.forget_unnamed();
                self.stand_in_parse(b"", r);
            } else {
                self.stand_in_parse(prepared::REFUSED_NAME, r);
            }
        } else if name.is_empty() {
            self.sout.extend_from_slice(&msg);
            self.outstanding.push(Pending::Step(Step::Parse, Owner::Client));
            self.unnamed = Some(Arc::new(stmt));
            self.unnamed_on_server = true;
        } else if self.statements.get(&name).is_some() {
            let message = format!("prepared statement \"{}\" already exists", String::from_utf8_lossy(&name));
            self.stand_in_parse(
                prepared::REFUSED_NAME,
                Refused { kind: "duplicate_statement", code: "42P05", message, hint: None },
            );
        } else if self.statements.is_full() {
            let limit = prepared::MAX_CLIENT_STATEMENTS;
            let message = format!("too many prepared statements on this connection (pgtenant's limit is {limit})");
            let hint = Some("close (DEALLOCATE) prepared statements that are no longer used");
            self.stand_in_parse(
                prepared::REFUSED_NAME,
                Refused { kind: "statement_limit", code: "53400", message, hint },
            );
        } else {
            stmt.id = self.shared.prepared.id_for(&stmt.text, &stmt.types);
            let stmt = Arc::new(stmt);
            self.statements.insert(name, stmt.clone());
            self.prepare_on_server(&stmt, false);
        }
        Ok(())
    }

    /// The client's unnamed statement is gone (a Query ran, it was closed, or
    /// its Parse failed).
    pub(super) fn forget_unnamed(&mut self) {
        self.unnamed = None;
        self.unnamed_on_server = false;
    }

    /// The client's unnamed statement must be on the attached server before a
    /// Bind or Describe of it: the server connection may have changed, or the
    /// proxy's own statements may have replaced it.
    fn ensure_unnamed(&mut self, stmt: &Statement) {
        if !self.unnamed_on_server {
            build::parse(&mut self.sout, b"", &stmt.text, &stmt.types);
            self.outstanding.push(Pending::Step(Step::Parse, Owner::Proxy));
            self.unnamed_on_server = true;
        }
    }

    /// The client's statement called `name` (`""` is the unnamed one).
    fn client_statement(&self, name: &[u8]) -> Option<Arc<Statement>> {
        if name.is_empty() {
            self.unnamed.clone()
        } else {
            self.statements.get(name).cloned()
        }
    }

    /// A Bind or Describe of a statement the client does not have: the error
    /// PostgreSQL would give. Never forwarded, since upstream names belong to
    /// the proxy.
    fn unknown_statement(&mut self, name: &[u8]) {
        self.begin_step(First::Plain);
        let message = if name.is_empty() {
            "unnamed prepared statement does not exist".to_string()
        } else {
            format!("prepared statement \"{}\" does not exist", String::from_utf8_lossy(name))
        };
        self.stand_in_parse(
            prepared::REFUSED_NAME,
            Refused { kind: "unknown_statement", code: "26000", message, hint: None },
        );
    }

    /// A named Parse outside any transaction needs no server: the statement is
    /// remembered, the proxy answers ParseComplete itself, and it is prepared
    /// upstream on first use. Clients that prepare synchronously (libpq's
    /// PQprepare, `pgbench -M prepared`) thus never wait for a server
    /// connection just to prepare, which would deadlock a pgbench thread
    /// whose other client holds one. An error in the text surfaces at the
    /// statement's first Bind or Describe. Returns false when the Parse must
    /// go upstream now (unnamed, refused, duplicate name, not one statement).
    pub(super) fn try_lazy_parse(&mut self, msg: &Bytes) -> Result<bool, Fatal> {
        let (name, sql, types) = parse_fields(msg).ok_or_else(|| Fatal::new("08P01", "invalid Parse message"))?;
        if name.is_empty() || self.statements.get(&name).is_some() || self.statements.is_full() {
            return Ok(false);
        }
        let insp = self.shared.inspector.inspect(&sql, self.standard_conforming_strings);
        if insp.lex_error || insp.statements.len() != 1 || inject::refusal(&insp.statements[0]).is_some() {
            return Ok(false);
        }
        let mut stmt = statement(&insp, sql, types);
        stmt.id = self.shared.prepared.id_for(&stmt.text, &stmt.types);
        self.statements.insert(name, Arc::new(stmt));
        self.outstanding.push(Pending::Step(Step::Parse, Owner::Synthetic));
        Ok(true)
    }

    /// `DEALLOCATE name` of one of the client's protocol-level statements:
    /// PostgreSQL accepts it for those, but upstream they have proxy names.
    /// The proxy forgets the client's name and answers itself (the server
    /// copy stays, shared). Only a Query of exactly that statement, with the
    /// transaction status known and not aborted, is answered so.
    pub(super) fn try_local_deallocate(&mut self, msg: &[u8]) -> bool {
        let Some((sql, b"")) = frame::cstr(&msg[frame::HEADER_LEN..]) else { return false };
        // A cheap look first: this runs for every Query.
        let head = sql.trim_ascii_start();
        if head.len() < 10 || !head[..10].eq_ignore_ascii_case(b"deallocate") {
            return false;
        }
        // Only with nothing owed is the transaction status known for sure.
        let status = match self.predicted {
            Some(s @ (IDLE | b'T')) if !self.unit_open && self.outstanding.is_empty() => s,
            _ => return false,
        };
        let insp = self.shared.inspector.inspect(sql, self.standard_conforming_strings);
        let [st] = insp.statements.as_slice() else { return false };
        let Some(SessionEffect::Deallocate { name: Some(name) }) = &st.session else { return false };
        if insp.lex_error || self.statements.get(name.as_bytes()).is_none() {
            return false;
        }
        self.statements.remove(name.as_bytes());
        let mut reply = BytesMut::new();
        build::message(&mut reply, b'C', |b| b.put_slice(b"DEALLOCATE\0"));
        build::ready_for_query(&mut reply, status);
        self.outstanding.push(Pending::Reply(reply));
        true
    }

    /// A Parse that fails upstream at the same point, its error rewritten to `r`.
    pub(super) fn stand_in_parse(&mut self, name: &[u8], r: Refused) {
        build::parse(&mut self.sout, name, inject::STAND_IN, b"\0\0");
        self.outstanding.push(Pending::Step(Step::Parse, Owner::StandIn(r)));
    }

    /// Makes sure the attached server has `stmt` under its proxy name. A client
    /// Parse of a statement the server already has is answered by the proxy.
    pub(super) fn prepare_on_server(&mut self, stmt: &Statement, hidden: bool) {
        let cap = self.shared.config().upstream.max_prepared_statements;
        let server = self.server.as_mut().expect("a server is attached");
        if !server.conn.prepared.insert(stmt.id) {
            if !hidden {
                self.outstanding.push(Pending::Step(Step::Parse, Owner::Synthetic));
            }
            return;
        }
        // The proxy's own statements are never evicted (every transaction may
        // use them), nor counted against the cap.
        let keep = [stmt.id, prepared::TENANT_STATEMENT_ID, prepared::CARRY_STATEMENT_ID];
        let proxy_own = [prepared::TENANT_STATEMENT_ID, prepared::CARRY_STATEMENT_ID]
            .iter()
            .filter(|id| server.conn.prepared.contains(**id))
            .count();
        while let Some(old) = server.conn.prepared.evict_over(cap + proxy_own, &keep) {
            prepared::close_statement(&prepared::server_name(old), &mut self.sout);
            self.outstanding.push(Pending::Step(Step::Close, Owner::Proxy));
        }
        // Close first: if the server still has the name after all (a
        // DISCARD ALL that failed), the Parse must not fail with 42P05.
        let name = stmt.server_name();
        prepared::close_statement(&name, &mut self.sout);
        self.outstanding.push(Pending::Step(Step::Close, Owner::Proxy));
        build::parse(&mut self.sout, &name, &stmt.text, &stmt.types);
        self.outstanding.push(Pending::Step(Step::Parse, Owner::Prepare { id: stmt.id, hidden }));
    }

    pub(super) fn on_bind(&mut self, msg: &Bytes) -> Result<(), Fatal> {
        let bad = || Fatal::new("08P01", "invalid Bind message");
        let (portal, rest) = frame::cstr(&msg[frame::HEADER_LEN..]).ok_or_else(bad)?;
        let (name, _) = frame::cstr(rest).ok_or_else(bad)?;
        let Some(stmt) = self.client_statement(name) else {
            self.unknown_statement(name);
            return Ok(());
        };
        self.begin_step(First::of(&stmt));
        self.unit_tx |= stmt.tx;
        if stmt.session {
            // Executed again, possibly in another transaction: note its effects again.
            let insp = self.shared.inspector.inspect(&stmt.text, self.standard_conforming_strings);
            self.note_deallocation(&insp);
            self.note_session_effects(&insp, &stmt.text);
        }
        if name.is_empty() {
            self.ensure_unnamed(&stmt);
            self.sout.extend_from_slice(msg);
        } else {
            self.prepare_on_server(&stmt, true);
            prepared::rename_bind(msg, &stmt.server_name(), &mut self.sout).ok_or_else(bad)?;
        }
        self.outstanding.push(Pending::Step(Step::Bind, Owner::Client));
        let portal = Bytes::copy_from_slice(portal);
        self.ending_portals.retain(|p| *p != portal);
        self.setup_portals.retain(|p| *p != portal);
        if stmt.tx_end {
            self.ending_portals.push(portal.clone());
        }
        if stmt.setup {
            self.setup_portals.push(portal);
        }
        Ok(())
    }

    /// Execute; after one that ends a transaction, the steps that follow in
    /// the same unit run in a new transaction, which needs the tenant again.
    pub(super) fn on_execute(&mut self, msg: &Bytes) -> Result<(), Fatal> {
        self.traffic.queries += 1;
        let (portal, _) =
            frame::cstr(&msg[frame::HEADER_LEN..]).ok_or_else(|| Fatal::new("08P01", "invalid Execute message"))?;
        self.forward_step(Step::Execute, msg, self.portal_first(portal));
        if self.ending_portals.iter().any(|p| p.as_ref() == portal) {
            self.reinject = true;
        }
        Ok(())
    }

    pub(super) fn on_describe(&mut self, msg: &Bytes) -> Result<(), Fatal> {
        let bad = || Fatal::new("08P01", "invalid Describe message");
        let (kind, rest) = msg[frame::HEADER_LEN..].split_first().ok_or_else(bad)?;
        let (name, _) = frame::cstr(rest).ok_or_else(bad)?;
        match kind {
            b'P' => self.forward_step(Step::DescribePortal, msg, self.portal_first(name)),
            b'S' => {
                let Some(stmt) = self.client_statement(name) else {
                    self.unknown_statement(name);
                    return Ok(());
                };
                self.begin_step(if self.signed && stmt.setup { First::Setup } else { First::Plain });
                if name.is_empty() {
                    self.ensure_unnamed(&stmt);
                    self.sout.extend_from_slice(msg);
                } else {
                    self.prepare_on_server(&stmt, true);
                    prepared::describe_statement(&stmt.server_name(), &mut self.sout);
                }
                self.outstanding.push(Pending::Step(Step::DescribeStatement, Owner::Client));
            }
            _ => return Err(bad()),
        }
        Ok(())
    }

    /// Closing a named statement only forgets the client's name: the server
    /// copy stays for other clients and is answered by the proxy.
    pub(super) fn on_close(&mut self, msg: &Bytes) -> Result<(), Fatal> {
        let bad = || Fatal::new("08P01", "invalid Close message");
        let (kind, rest) = msg[frame::HEADER_LEN..].split_first().ok_or_else(bad)?;
        let (name, _) = frame::cstr(rest).ok_or_else(bad)?;
        match (kind, name.is_empty()) {
            (b'S', false) => {
                self.statements.remove(name);
                self.outstanding.push(Pending::Step(Step::Close, Owner::Synthetic));
            }
            (b'S', true) => {
                self.forget_unnamed();
                self.forward_step(Step::Close, msg, First::Plain);
            }
            (b'P', _) => self.forward_step(Step::Close, msg, First::Plain),
            _ => return Err(bad()),
        }
        Ok(())
    }

    /// How an Execute or Describe of `portal` counts for the injection: a
    /// portal of a setup statement must run before the signed-mode tenant.
    fn portal_first(&self, portal: &[u8]) -> First {
        if self.signed && self.setup_portals.iter().any(|p| p.as_ref() == portal) {
            First::Setup
        } else {
            First::Plain
        }
    }

    /// Opens an extended-protocol unit; the tenant goes first when it starts a
    /// transaction. A unit opening with transaction control gets `SET LOCAL`
    /// (it takes no snapshot, so `BEGIN ISOLATION LEVEL` still works after
    /// it); one opening with a statement that cannot run in a transaction
    /// block gets nothing (it runs without a tenant: fail closed). In signed
    /// mode the tenant can only be a bound `SELECT`, which takes a snapshot,
    /// so it waits until the transaction-setup steps have run.
    pub(super) fn begin_step(&mut self, first: First) {
        let deferred = self.signed && first == First::Setup;
        if self.unit_open {
            if self.reinject && !deferred {
                self.reinject = false;
                if first != First::NoBlock {
                    self.inject_tenant(first);
                }
            }
            return;
        }
        self.unit_open = true;
        self.unit_tx = false;
        self.ending_portals.clear();
        self.setup_portals.clear();
        // After COMMIT AND CHAIN the status is T, yet the chained transaction
        // is new: `reinject` survives the Sync only in that case (and after a
        // signed-mode BEGIN that is still waiting for its tenant).
        let chained = std::mem::take(&mut self.reinject);
        if (self.predicted == Some(IDLE) || chained) && first != First::NoBlock {
            if deferred {
                self.reinject = true;
            } else {
                self.inject_tenant(first);
            }
        }
    }

    /// The hidden steps that set the tenant for the current transaction.
    fn inject_tenant(&mut self, first: First) {
        if !self.signed && matches!(first, First::TxControl | First::Setup) {
            build::parse_unnamed(&mut self.sout, &self.tenant_stmt);
            build::bind_unnamed(&mut self.sout);
            build::execute_unnamed(&mut self.sout);
            for step in [Step::Parse, Step::Bind, Step::Execute] {
                self.outstanding.push(Pending::Step(step, Owner::Proxy));
            }
            self.unnamed_on_server = false;
        } else {
            self.push_tenant_steps();
        }
    }

    /// Bind, Execute and Close of the prepared tenant statement, with the
    /// tenant (and in signed mode its proof) as parameters.
    pub(super) fn push_tenant_steps(&mut self) {
        let stmt = self.tenant_select.clone();
        self.prepare_on_server(&stmt, true);
        let name = stmt.server_name();
        match self.current_proof() {
            Some(proof) => prepared::run_in_tenant_portal(&name, &[&self.tenant, &proof], &mut self.sout),
            None => prepared::run_in_tenant_portal(&name, &[&self.tenant], &mut self.sout),
        }
        for step in [Step::Bind, Step::Execute, Step::Close] {
            self.outstanding.push(Pending::Step(step, Owner::Proxy));
        }
    }

    /// Signed mode: Bind, Execute and Close of the carry statement, storing
    /// the tenant and its proof in session-level settings for the copy
    /// statements inside a Query text (see [`inject::copy_statement`]).
    pub(super) fn push_carry_steps(&mut self) {
        let stmt = prepared::carry_statement();
        self.prepare_on_server(&stmt, true);
        let proof = self.current_proof().expect("signed mode has a key");
        prepared::run_in_tenant_portal(&stmt.server_name(), &[&self.tenant, &proof], &mut self.sout);
        for step in [Step::Bind, Step::Execute, Step::Close] {
            self.outstanding.push(Pending::Step(step, Owner::Proxy));
        }
    }

    /// The signed-mode proof for this client's tenant under the configured
    /// key, recomputed only when the key changed (a reload rotates it).
    fn current_proof(&mut self) -> Option<Bytes> {
        let config = self.shared.config();
        let key = config.tenant.mode.signing_key()?;
        match &self.proof {
            Some((kid, proof)) if kid == key.kid() => Some(proof.clone()),
            _ => {
                let tenant = String::from_utf8_lossy(&self.tenant);
                let proof = Bytes::from(key.proof(&tenant));
                self.proof = Some((key.kid().to_string(), proof.clone()));
                Some(proof)
            }
        }
    }

    pub(super) fn forward_step(&mut self, step: Step, msg: &[u8], first: First) {
        self.begin_step(first);
        self.sout.extend_from_slice(msg);
        self.outstanding.push(Pending::Step(step, Owner::Client));
    }

    pub(super) fn on_sync(&mut self, msg: &[u8]) {
        self.sout.extend_from_slice(msg);
        self.outstanding.push(Pending::Sync);
        if self.unit_tx {
            self.predicted = None;
        }
        self.unit_open = false;
        self.unit_tx = false;
    }
}

/// The name, text and parameter-type section of a Parse message.
pub(super) fn parse_fields(msg: &Bytes) -> Option<(Bytes, Bytes, Bytes)> {
    let body = &msg[frame::HEADER_LEN..];
    let (name, rest) = frame::cstr(body)?;
    let (sql, types) = frame::cstr(rest)?;
    let count = i16::from_be_bytes([*types.first()?, *types.get(1)?]);
    if count < 0 || types.len() != 2 + 4 * count as usize {
        return None;
    }
    Some((msg.slice_ref(name), msg.slice_ref(sql), msg.slice_ref(types)))
}

/// A statement's text and what the proxy needs to know about it; `id` is
/// assigned when it gets a server-side name.
fn statement(insp: &Inspection, text: Bytes, types: Bytes) -> Statement {
    let tx = insp.statements.iter().any(|s| s.tx != TxControl::None);
    // set_config's third argument may make it session-wide, under any name.
    let session = insp.statements.iter().any(|s| s.session.is_some()) || params::mentions_set_config(&text);
    let no_block = matches!(insp.statements.as_slice(), [only] if only.no_tx_block);
    // ROLLBACK TO counts: it undoes a tenant set after its savepoint.
    let tx_end =
        insp.statements.iter().any(|s| matches!(s.tx, TxControl::End | TxControl::EndAndChain) || s.rollback_to);
    let setup = !insp.statements.is_empty() && insp.statements.iter().all(inject::is_setup);
    Statement { id: 0, text, types, tx, tx_end, setup, session, no_block }
}
