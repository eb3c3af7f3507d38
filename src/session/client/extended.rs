//! The extended query protocol: Parse/Bind/Describe/Close/Sync, named
//! statements across server connections, and the tenant in front of each
//! extended-protocol transaction.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::{Session, IDLE};
use crate::session::inject::{self, Refused};
use crate::session::outstanding::{Owner, Pending, Step};
use crate::session::prepared::{self, Statement};
use crate::session::Fatal;
use crate::sql::inspect::{SessionEffect, TxControl};
use crate::wire::{build, frame};

impl Session {
    pub(super) fn on_parse(&mut self, msg: Bytes) -> Result<(), Fatal> {
        let (name, sql, types) = parse_fields(&msg).ok_or_else(|| Fatal::new("08P01", "invalid Parse message"))?;
        let insp = self.shared.inspector.inspect(&sql, self.standard_conforming_strings);
        let tx = insp.statements.iter().any(|s| s.tx != TxControl::None);
        self.begin_step(tx);
        self.unit_tx |= tx;
        self.note_deallocation(&insp);
        self.note_session_effects(&insp, &sql);
        let refusal =
            if insp.lex_error { Some(Refused::unparsable()) } else { insp.statements.iter().find_map(inject::refusal) };
        if let Some(r) = refusal {
            self.stand_in_parse(r);
        } else if name.is_empty() {
            self.unnamed_tx = tx;
            self.sout.extend_from_slice(&msg);
            self.outstanding.push(Pending::Step(Step::Parse, Owner::Client));
        } else if self.statements.get(&name).is_some() {
            let text = String::from_utf8_lossy(&name);
            self.stand_in_parse(Refused {
                code: "42P05",
                message: format!("prepared statement \"{text}\" already exists"),
                hint: None,
            });
        } else {
            let id = self.shared.prepared.id_for(&sql, &types);
            let session = insp.statements.iter().any(|s| s.session.is_some());
            let stmt = Arc::new(Statement { id, text: sql, types, tx, session });
            self.statements.insert(name, stmt.clone());
            self.prepare_on_server(&stmt, false);
        }
        Ok(())
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
        if name.is_empty() || self.statements.get(&name).is_some() {
            return Ok(false);
        }
        let insp = self.shared.inspector.inspect(&sql, self.standard_conforming_strings);
        if insp.lex_error || insp.statements.len() != 1 || inject::refusal(&insp.statements[0]).is_some() {
            return Ok(false);
        }
        let st = &insp.statements[0];
        let (tx, session) = (st.tx != TxControl::None, st.session.is_some());
        let id = self.shared.prepared.id_for(&sql, &types);
        self.statements.insert(name, Arc::new(Statement { id, text: sql, types, tx, session }));
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
        let status = match self.predicted {
            Some(s @ (IDLE | b'T')) if !self.unit_open => s,
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
    pub(super) fn stand_in_parse(&mut self, r: Refused) {
        build::parse(&mut self.sout, b"", inject::STAND_IN, b"\0\0");
        self.outstanding.push(Pending::Step(Step::Parse, Owner::StandIn(r)));
    }

    /// Makes sure the attached server has `stmt` under its proxy name. A client
    /// Parse of a statement the server already has is answered by the proxy.
    pub(super) fn prepare_on_server(&mut self, stmt: &Statement, hidden: bool) {
        let cap = self.shared.config.upstream.max_prepared_statements;
        let server = self.server.as_mut().expect("a server is attached");
        if !server.conn.prepared.insert(stmt.id) {
            if !hidden {
                self.outstanding.push(Pending::Step(Step::Parse, Owner::Synthetic));
            }
            return;
        }
        // The tenant statement is never evicted (every transaction uses it),
        // nor counted against the cap.
        let keep = [stmt.id, prepared::TENANT_STATEMENT_ID];
        while let Some(old) = server.conn.prepared.evict_over(cap + 1, &keep) {
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
        let (_portal, rest) = frame::cstr(&msg[frame::HEADER_LEN..]).ok_or_else(bad)?;
        let (name, _) = frame::cstr(rest).ok_or_else(bad)?;
        if name.is_empty() {
            self.forward_step(Step::Bind, msg, self.unnamed_tx);
            return Ok(());
        }
        let Some(stmt) = self.statements.get(name).cloned() else {
            // Unknown to the proxy: PostgreSQL will say it does not exist.
            self.forward_step(Step::Bind, msg, false);
            return Ok(());
        };
        self.begin_step(stmt.tx);
        self.unit_tx |= stmt.tx;
        if stmt.session {
            // Executed again, possibly in another transaction: note its effects again.
            let insp = self.shared.inspector.inspect(&stmt.text, self.standard_conforming_strings);
            self.note_deallocation(&insp);
            self.note_session_effects(&insp, &stmt.text);
        }
        self.prepare_on_server(&stmt, true);
        prepared::rename_bind(msg, &stmt.server_name(), &mut self.sout).ok_or_else(bad)?;
        self.outstanding.push(Pending::Step(Step::Bind, Owner::Client));
        Ok(())
    }

    pub(super) fn on_describe(&mut self, msg: &Bytes) -> Result<(), Fatal> {
        let body = &msg[frame::HEADER_LEN..];
        let (kind, name) = match body.split_first() {
            Some((kind @ (b'S' | b'P'), rest)) => (*kind, frame::cstr(rest).map(|(n, _)| n)),
            _ => return Err(Fatal::new("08P01", "invalid Describe message")),
        };
        let name = name.ok_or_else(|| Fatal::new("08P01", "invalid Describe message"))?;
        if kind == b'P' {
            self.forward_step(Step::DescribePortal, msg, false);
            return Ok(());
        }
        match self.statements.get(name).cloned().filter(|_| !name.is_empty()) {
            Some(stmt) => {
                self.begin_step(false);
                self.prepare_on_server(&stmt, true);
                prepared::describe_statement(&stmt.server_name(), &mut self.sout);
                self.outstanding.push(Pending::Step(Step::DescribeStatement, Owner::Client));
            }
            None => self.forward_step(Step::DescribeStatement, msg, false),
        }
        Ok(())
    }

    /// Closing a named statement only forgets the client's name: the server
    /// copy stays for other clients and is answered by the proxy.
    pub(super) fn on_close(&mut self, msg: &Bytes) -> Result<(), Fatal> {
        let body = &msg[frame::HEADER_LEN..];
        match body.split_first() {
            Some((b'S', rest)) => {
                let (name, _) = frame::cstr(rest).ok_or_else(|| Fatal::new("08P01", "invalid Close message"))?;
                if name.is_empty() {
                    self.forward_step(Step::Close, msg, false);
                } else {
                    self.statements.remove(name);
                    self.outstanding.push(Pending::Step(Step::Close, Owner::Synthetic));
                }
            }
            Some((b'P', _)) => self.forward_step(Step::Close, msg, false),
            _ => return Err(Fatal::new("08P01", "invalid Close message")),
        }
        Ok(())
    }

    /// Opens an extended-protocol unit; the tenant goes first when it starts a
    /// transaction. `tx_first` says the unit opens with transaction control,
    /// which needs `SET LOCAL` (it takes no snapshot, so `BEGIN ISOLATION
    /// LEVEL` still works after it).
    pub(super) fn begin_step(&mut self, tx_first: bool) {
        if self.unit_open {
            return;
        }
        self.unit_open = true;
        self.unit_tx = false;
        if self.predicted != Some(IDLE) {
            return;
        }
        if tx_first {
            build::parse_unnamed(&mut self.sout, &self.tenant_stmt);
            build::bind_unnamed(&mut self.sout);
            self.outstanding.push(Pending::Step(Step::Parse, Owner::Proxy));
        } else {
            let stmt = self.tenant_select.clone();
            self.prepare_on_server(&stmt, true);
            prepared::bind_text(&stmt.server_name(), &[&self.tenant], &mut self.sout);
        }
        build::execute_unnamed(&mut self.sout);
        for step in [Step::Bind, Step::Execute] {
            self.outstanding.push(Pending::Step(step, Owner::Proxy));
        }
    }

    pub(super) fn forward_step(&mut self, step: Step, msg: &[u8], tx: bool) {
        self.begin_step(tx);
        self.unit_tx |= tx;
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
