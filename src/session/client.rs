//! The per-client transaction-pooling loop.
//!
//! The session owns the client socket and, during a transaction, one server
//! connection. It reads client messages, injects the tenant at the start of
//! each transaction, replaces refused statements, and forwards the rest as
//! bytes; replies are filtered through [`Outstanding`]. The server goes back
//! to the pool at `ReadyForQuery 'I'` once nothing else is owed.
//!
//! All four directions (client read/write, server read/write) are driven by
//! one `poll_fn`, so a client that pipelines a lot while the server answers a
//! lot can never deadlock the two sockets against each other.

use std::collections::BTreeSet;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWrite;
use tokio_util::io::poll_read_buf;

use super::inject::{self, Piece, PositionMap, Refused, Role};
use super::login::LoggedIn;
use super::outstanding::{self, Action, Outstanding, Pending, QueryPlan};
use super::params::Settings;
use super::prepared::{self, ClientStatements, Statement};
use super::Fatal;
use crate::cancel::{Registration, ServerKey};
use crate::metrics::ClientGuard;
use crate::net::ClientStream;
use crate::server::{Phase, Shared};
use crate::sql::inspect::{Inspection, TxControl};
use crate::upstream::connect::MAX_SERVER_MESSAGE;
use crate::upstream::{Owner, PoolError, Pooled};
use crate::wire::{build, frame};

mod extended;
mod settings;

use settings::{apply_startup_settings, overlay};

/// Stop reading from one side while this much is waiting to be written to the other.
const HIGH_WATER: usize = 256 << 10;
const READ_CHUNK: usize = 16 << 10;
/// Read room for a client with nothing buffered.
const IDLE_READ: usize = 1 << 10;

/// Transaction status byte of an idle session.
const IDLE: u8 = b'I';

/// One logged-in client.
pub struct Session {
    shared: Arc<Shared>,
    peer: SocketAddr,
    client: ClientStream,
    cin: BytesMut,
    cout: BytesMut,
    client_unflushed: bool,
    server: Option<Pooled>,
    sout: BytesMut,
    server_unflushed: bool,
    outstanding: Outstanding,
    /// `SET LOCAL <setting> = '<tenant>'` for this client.
    tenant_stmt: Bytes,
    /// The tenant id itself, bound as the parameter of [`prepared::tenant_statement`]:
    /// the extended-protocol form, since `SET LOCAL` outside a block makes the
    /// server log a WARNING for every transaction.
    tenant: Bytes,
    tenant_select: Arc<Statement>,
    /// `tenant.mode = "signed"` (fixed for the process: a restart-only key).
    signed: bool,
    /// The signed-mode proof for this tenant and the id of the key it was made with.
    proof: Option<(String, Bytes)>,
    /// Signed mode: the attached server holds this client's tenant and proof
    /// in the session-level carry settings (cleared before it goes back).
    carry_ready: bool,
    /// This client's tenant as the pool knows it (per-tenant cap, fair turns).
    owner: Owner,
    /// Counts this client in its tenant's metrics while it is connected.
    counted: ClientGuard,
    /// When the attached server connection was taken from the pool.
    attached_at: Instant,
    /// Counted here and added to the shared metrics once per transaction,
    /// so the hot path touches no shared cache line per message.
    traffic: Traffic,
    cancel: Registration,
    /// Extended-protocol messages were sent since the last Sync.
    unit_open: bool,
    /// The open extended unit contains transaction control.
    unit_tx: bool,
    /// Transaction status after everything forwarded so far, or `None` while a
    /// transaction-control statement's outcome is still unknown.
    predicted: Option<u8>,
    /// Status of the last ReadyForQuery from the server.
    server_status: u8,
    /// The client's named prepared statements.
    statements: ClientStatements,
    /// The client's unnamed statement, if it has one.
    unnamed: Option<Arc<Statement>>,
    /// Whether the attached server holds it under the unnamed name right now.
    unnamed_on_server: bool,
    /// Portals bound in the open unit to a statement that ends a transaction.
    ending_portals: Vec<Bytes>,
    /// Portals bound in the open unit to a transaction-setup statement.
    setup_portals: Vec<Bytes>,
    /// A transaction ended inside the open unit: set the tenant again before
    /// the next step.
    reinject: bool,
    /// The settings from the startup packet, which `RESET` returns to.
    startup: Settings,
    /// Startup settings the client reset in this transaction.
    reset_to_startup: BTreeSet<String>,
    /// The attached server may carry session state of this client (a
    /// session-level SET, LISTEN, temp table, ...). Such a connection is
    /// closed instead of going back to the pool, so nothing can reach
    /// another tenant; tracking and re-applying that state is future work.
    dirty: bool,
    /// The session settings this client expects on every server connection.
    desired: Settings,
    /// Settings the client changed in the current transaction, to be read
    /// back from the server before the connection is released.
    changed: BTreeSet<String>,
    /// The client ran `RESET ALL` or `DISCARD ALL`.
    reset_all: bool,
    /// Names of the settings the pending capture query reads, in order.
    capturing: Vec<String>,
    standard_conforming_strings: bool,
    /// When the client's token, leeway included, stops admitting new
    /// transactions (unix seconds).
    expires_at: u64,
}

/// Per-session counts not yet added to the shared metrics.
#[derive(Default)]
struct Traffic {
    queries: u64,
    bytes_in: u64,
    bytes_out: u64,
}

impl Traffic {
    fn flush(&mut self) {
        let hot = crate::metrics::hot();
        let Traffic { queries, bytes_in, bytes_out } = std::mem::take(self);
        hot.queries.increment(queries);
        hot.bytes_in.increment(bytes_in);
        hot.bytes_out.increment(bytes_out);
    }
}

enum Event {
    ClientData,
    ClientEof,
    ServerData,
    ServerEof,
    Wrote,
}

/// Runs a logged-in client until it leaves.
pub async fn run(shared: Arc<Shared>, logged: LoggedIn, peer: SocketAddr) {
    let started = Instant::now();
    let tenant = logged.tenant.as_str().to_string();
    let mut session = match Session::start(shared, logged, peer).await {
        Ok(s) => s,
        Err((fatal, mut stream)) => {
            tracing::warn!(%peer, %tenant, code = fatal.code, error = %fatal.message, "session refused");
            fatal.send(&mut stream).await;
            return;
        }
    };
    let result = session.serve().await;
    if let Err(fatal) = &result {
        match fatal.code {
            "57P01" => tracing::info!(%peer, %tenant, "client disconnected by the shutdown"),
            _ => {
                tracing::warn!(%peer, %tenant, code = fatal.code, error = %fatal.message, "session ended with an error")
            }
        }
        let mut buf = BytesMut::new();
        build::error_response(&mut buf, build::Severity::Fatal, fatal.code, &fatal.message, fatal.hint.as_deref());
        session.cout.extend_from_slice(&buf);
    }
    session.finish().await;
    session.traffic.flush();
    tracing::info!(%peer, %tenant, duration_seconds = started.elapsed().as_secs_f64(), "client disconnected");
}

impl Session {
    async fn start(shared: Arc<Shared>, logged: LoggedIn, peer: SocketAddr) -> Result<Session, (Fatal, ClientStream)> {
        let LoggedIn { stream, rbuf, tenant, user, settings, expires_at } = logged;
        let mut params = match shared.pool.server_params(shared.config().upstream.pool_timeout).await {
            Ok(p) => p.as_ref().clone(),
            Err(e) => return Err((pool_fatal(e), stream)),
        };
        if !settings.is_empty() {
            match apply_startup_settings(&shared, &Owner::tenant(&tenant), &settings).await {
                Ok(reported) => overlay(&mut params, reported),
                Err(fatal) => return Err((fatal, stream)),
            }
        }
        let cancel = shared.cancel.register();
        let mut cout = BytesMut::with_capacity(1024);
        build::authentication(&mut cout, 0);
        for (name, value) in params.iter() {
            build::parameter_status(&mut cout, name, value);
        }
        build::backend_key_data(&mut cout, cancel.pid, cancel.secret);
        build::ready_for_query(&mut cout, IDLE);
        let scs = !params.iter().any(|(k, v)| k == "standard_conforming_strings" && v == "off");
        let setting = shared.config().tenant.setting.clone();
        let signed = shared.config().tenant.mode.signing_key().is_some();
        let stmt = inject::set_local(&setting, &tenant);
        let counted = shared.tenants.connect(tenant.as_str());
        tracing::info!(%peer, user = %user, tenant = %tenant.as_str(), tls = stream.is_tls(), "client logged in");
        let shared_leeway = shared.config().auth.leeway;
        Ok(Session {
            shared,
            peer,
            client: stream,
            cin: rbuf,
            cout,
            client_unflushed: false,
            server: None,
            sout: BytesMut::new(),
            server_unflushed: false,
            outstanding: Outstanding::default(),
            tenant_stmt: Bytes::from(stmt),
            tenant: Bytes::copy_from_slice(tenant.as_str().as_bytes()),
            tenant_select: Arc::new(prepared::tenant_statement(&setting, signed)),
            signed,
            proof: None,
            carry_ready: false,
            owner: Owner::tenant(&tenant),
            counted,
            attached_at: Instant::now(),
            traffic: Traffic::default(),
            cancel,
            unit_open: false,
            unit_tx: false,
            predicted: Some(IDLE),
            server_status: IDLE,
            statements: ClientStatements::default(),
            dirty: false,
            desired: settings.clone(),
            changed: BTreeSet::new(),
            reset_all: false,
            capturing: Vec::new(),
            unnamed: None,
            unnamed_on_server: false,
            ending_portals: Vec::new(),
            setup_portals: Vec::new(),
            reinject: false,
            startup: settings,
            reset_to_startup: BTreeSet::new(),
            standard_conforming_strings: scs,
            expires_at: expires_at.saturating_add(shared_leeway),
        })
    }

    async fn serve(&mut self) -> Result<(), Fatal> {
        let mut phase = self.shared.phase.subscribe();
        loop {
            // Server replies first: a ReadyForQuery may settle the transaction
            // status that client messages already buffered were waiting for.
            self.process_server()?;
            if !self.process_client().await? {
                return Ok(());
            }
            self.maybe_release().await;
            match *phase.borrow_and_update() {
                Phase::Running => {}
                Phase::Draining if !self.is_idle() => {}
                Phase::Draining | Phase::Closing => return Err(shutting_down()),
            }
            let event = tokio::select! {
                event = self.wait_event() => event,
                _ = phase.changed() => continue,
            };
            match event {
                Ok(Event::ClientEof) => return Ok(()),
                Ok(Event::ServerEof) => {
                    return Err(Fatal::new("08006", "the server connection closed unexpectedly")
                        .hint("the transaction in progress was lost; reconnect and retry"));
                }
                Ok(Event::ClientData | Event::ServerData | Event::Wrote) => {}
                Err(side) => return Err(side),
            }
        }
    }

    /// Handles every complete client message that may go now. Returns false
    /// when the client asked to terminate.
    async fn process_client(&mut self) -> Result<bool, Fatal> {
        // Backpressure both ways: stop while either peer is not reading.
        while self.sout.len() < HIGH_WATER && self.cout.len() < HIGH_WATER {
            // Like PostgreSQL, judge the type byte before waiting for a body
            // whose length an unknown message could set to anything.
            if let Some(&tag) = self.cin.first() {
                if !FRONTEND_TAGS.contains(&tag) {
                    return Err(invalid_type(tag));
                }
            }
            let header = frame::complete_header(&self.cin, self.shared.config().listen.max_message_bytes)
                .map_err(|e| Fatal::new("08P01", format!("invalid message from client: {e}")))?;
            let Some(h) = header else { break };
            // While a transaction-control outcome is pending, only COPY data
            // (which the server may be waiting for) and Flush may pass.
            if self.predicted.is_none() && !matches!(h.tag, b'd' | b'c' | b'f' | b'H') {
                break;
            }
            let msg = self.cin.split_to(h.total).freeze();
            if !self.on_client_message(h.tag, msg).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn on_client_message(&mut self, tag: u8, msg: Bytes) -> Result<bool, Fatal> {
        let attached = self.server.is_some();
        match tag {
            b'X' => return Ok(false),
            b'S' if !attached && !self.unit_open => {
                build::ready_for_query(&mut self.cout, IDLE);
                return Ok(true);
            }
            // Flush with nothing pending, and COPY data after a failed COPY,
            // need no server (PostgreSQL ignores the latter too).
            b'H' | b'd' | b'c' | b'f' if !attached => return Ok(true),
            b'Q' | b'F' | b'P' | b'B' | b'D' | b'E' | b'C' | b'S' | b'H' | b'd' | b'c' | b'f' => {}
            other => return Err(invalid_type(other)),
        }
        if tag == b'Q' && self.try_local_deallocate(&msg) {
            self.outstanding.drain_synthetic(&mut self.cout);
            return Ok(true);
        }
        if !attached && !self.unit_open && self.answer_without_server(tag, &msg) {
            self.outstanding.drain_synthetic(&mut self.cout);
            return Ok(true);
        }
        if tag == b'P' && !attached && !self.unit_open && self.try_lazy_parse(&msg)? {
            self.outstanding.drain_synthetic(&mut self.cout);
            return Ok(true);
        }
        self.ensure_server().await?;
        match tag {
            b'Q' => self.on_query(msg)?,
            b'F' => self.on_function_call(),
            b'P' => self.on_parse(msg)?,
            b'B' => self.on_bind(&msg)?,
            b'D' => self.on_describe(&msg)?,
            b'E' => self.on_execute(&msg)?,
            b'C' => self.on_close(&msg)?,
            b'S' => self.on_sync(&msg),
            b'c' | b'f' => {
                self.outstanding.copy_done();
                self.sout.extend_from_slice(&msg);
            }
            _ => self.sout.extend_from_slice(&msg),
        }
        self.outstanding.drain_synthetic(&mut self.cout);
        Ok(true)
    }

    async fn ensure_server(&mut self) -> Result<(), Fatal> {
        if self.server.is_some() {
            return Ok(());
        }
        // A transaction already open may finish; a new one needs a live token.
        if unix_now() > self.expires_at {
            return Err(Fatal::new("28P01", "token has expired")
                .hint("reconnect with a fresh token (e.g. node-postgres: password as an async function)"));
        }
        let pooled = self
            .shared
            .pool
            .checkout(&self.owner, self.shared.config().upstream.pool_timeout)
            .await
            .map_err(pool_fatal)?;
        let (pid, secret) = pooled.conn.key;
        *self.cancel.slot.lock().await = Some(ServerKey { pid, secret });
        self.server = Some(pooled);
        self.attached_at = Instant::now();
        self.server_status = IDLE;
        self.unnamed_on_server = false;
        self.carry_ready = false;
        self.sync_settings();
        Ok(())
    }

    fn on_query(&mut self, msg: Bytes) -> Result<(), Fatal> {
        self.traffic.queries += 1;
        let sql = match frame::cstr(&msg[frame::HEADER_LEN..]) {
            Some((sql, b"")) => msg.slice(frame::HEADER_LEN..frame::HEADER_LEN + sql.len()),
            _ => return Err(Fatal::new("08P01", "invalid Query message")),
        };
        if self.outstanding.is_skipping() {
            // After an error the server ignores everything until Sync, this too.
            self.sout.extend_from_slice(&msg);
            return Ok(());
        }
        let insp = self.shared.inspector.inspect(&sql, self.standard_conforming_strings);
        // Inside an extended unit the tenant is already set, but setting it
        // again is harmless and keeps this simple.
        let pending = std::mem::take(&mut self.reinject);
        let starts_transaction = self.predicted == Some(IDLE) || pending;
        let single_no_block = insp.statements.len() == 1 && insp.statements[0].no_tx_block;
        // A lone statement outside any transaction that needs no tenant and
        // opens no block (SET, SHOW, LOCK, SAVEPOINT, ...) runs as it would on
        // PostgreSQL: a prefix would make it a two-statement implicit block,
        // where LOCK or SAVEPOINT succeed instead of failing.
        let lone_free = !pending && insp.statements.len() == 1 && inject::needs_no_tenant(&insp.statements[0]);
        let inject =
            starts_transaction && !insp.lex_error && !insp.statements.is_empty() && !single_no_block && !lone_free;
        let tx_control = insp.statements.iter().any(|s| s.tx != TxControl::None);
        self.note_deallocation(&insp);
        self.note_session_effects(&insp, &sql);
        // A simple Query drops the unnamed statement, as on PostgreSQL.
        self.forget_unnamed();
        if self.signed {
            self.signed_query(&msg, &sql, &insp, inject);
        } else {
            match inject::rewrite_query(&sql, &insp, Some(&self.tenant_stmt), inject) {
                None => {
                    self.sout.extend_from_slice(&msg);
                    self.outstanding.push(Pending::Query(QueryPlan::new(Vec::new(), None)));
                }
                Some(rw) => {
                    build::query(&mut self.sout, &rw.text);
                    let roles = rw.roles.clone();
                    self.outstanding.push(Pending::Query(QueryPlan::new(roles, Some(rw.into_map()))));
                }
            }
        }
        // A Query ends an open extended unit's transaction, like a Sync.
        let unit_tx = std::mem::take(&mut self.unit_tx);
        self.unit_open = false;
        if (tx_control && !insp.lex_error) || unit_tx {
            self.predicted = None;
        }
        Ok(())
    }

    /// A simple Query in signed mode: the tenant and its proof can only travel
    /// as bound parameters, so the tenant statement is sent as extended-
    /// protocol steps (Bind/Execute/Close, no Sync) right before the Query,
    /// in the same write, and runs in the Query's transaction. Statements that
    /// must run before it (transaction setup) or in an earlier transaction of
    /// the same Query are sent ahead as their own steps; see [`inject::plan_signed`].
    fn signed_query(&mut self, msg: &Bytes, sql: &Bytes, insp: &Inspection, needs_tenant: bool) {
        let plan = inject::plan_signed(insp, needs_tenant);
        if plan.pending {
            self.reinject = true;
        }
        // Outside any transaction (or once the carry is set) the whole text
        // stays one Query, with the tenant copied in from the carry settings
        // where each transaction needs it: PostgreSQL then parses all of it
        // before running any of it, exactly as without the proxy.
        let outside = self.predicted == Some(IDLE) && !self.unit_open;
        if plan.splits() && (outside || self.carry_ready) {
            if !self.carry_ready {
                // Its own implicit transaction (the Sync commits it), so it
                // takes no snapshot in the client's transaction.
                self.push_carry_steps();
                build::sync(&mut self.sout);
                self.outstanding.push(Pending::HiddenSync { forward: false });
                self.carry_ready = true;
            }
            // Built when needed: this path is rare, and a field would cost every idle client.
            let copy = inject::copy_statement(&self.shared.config().tenant.setting);
            let rw = inject::rewrite_at(sql, insp, &plan.points, &copy);
            build::query(&mut self.sout, &rw.text);
            let roles = rw.roles.clone();
            self.outstanding.push(Pending::Query(QueryPlan::new(roles, Some(rw.into_map()))));
            return;
        }
        // Inside a transaction block whose tenant is still pending: the carry
        // cannot be set now without a snapshot, so statements before the last
        // transaction start go ahead as their own steps.
        if plan
            .early
            .iter()
            .any(|p| matches!(p, Piece::Statement(i) if inject::copies_from_client(sql, &insp.statements[*i])))
        {
            // The steps after it would reach the server during the copy.
            let refused = Refused::pooling(
                "in signed mode, COPY FROM STDIN followed by COMMIT and more statements in one query",
                "send the statements after the COPY as a separate query",
            );
            build::query(&mut self.sout, inject::STAND_IN);
            self.outstanding.push(Pending::Query(QueryPlan::new(vec![Role::StandIn(refused)], None)));
            return;
        }
        let ahead = !plan.early.is_empty() || plan.tenant_before_tail;
        for piece in &plan.early {
            match *piece {
                Piece::Tenant => self.push_tenant_steps(),
                Piece::Statement(i) => self.push_early_statement(sql, &insp.statements[i]),
            }
        }
        if plan.tenant_before_tail {
            self.push_tenant_steps();
        }
        let query = if plan.tail == 0 {
            match inject::rewrite_query(sql, insp, None, false) {
                None => {
                    self.sout.extend_from_slice(msg);
                    QueryPlan::new(Vec::new(), None)
                }
                Some(rw) => {
                    build::query(&mut self.sout, &rw.text);
                    let roles = rw.roles.clone();
                    QueryPlan::new(roles, Some(rw.into_map()))
                }
            }
        } else {
            let start = insp.statements[plan.tail].span.start;
            let tail = sql.slice(start..);
            let tail_insp = self.shared.inspector.inspect(&tail, self.standard_conforming_strings);
            let (roles, map) = match inject::rewrite_query(&tail, &tail_insp, None, false) {
                None => {
                    build::query(&mut self.sout, &tail);
                    (Vec::new(), PositionMap::unchanged(tail))
                }
                Some(rw) => {
                    build::query(&mut self.sout, &rw.text);
                    (rw.roles.clone(), rw.into_map())
                }
            };
            QueryPlan::new(roles, Some(map.after(&sql[..start])))
        };
        if ahead && !self.unit_open {
            // If a step ahead fails, the server skips the Query too, up to a
            // Sync the client never sends: the proxy sends one after every
            // such Query (an extra ReadyForQuery, dropped, in the same write).
            self.outstanding.push(Pending::Query(query.resync_on_skip()));
            build::sync(&mut self.sout);
            self.outstanding.push(Pending::HiddenSync { forward: false });
        } else {
            self.outstanding.push(Pending::Query(query));
        }
    }

    /// One statement of a signed-mode Query sent ahead of the rest, as the
    /// Query itself would have run it: its rows, RowDescription included,
    /// and its errors (positions in the client's text) reach the client.
    fn push_early_statement(&mut self, sql: &Bytes, st: &crate::sql::inspect::Statement) {
        let early = outstanding::Owner::Early { base: inject::char_count(&sql[..st.span.start]) };
        if let Some(refused) = inject::refusal(st) {
            build::parse(&mut self.sout, b"", inject::STAND_IN, b"\0\0");
            self.outstanding.push(Pending::Step(outstanding::Step::Parse, outstanding::Owner::StandIn(refused)));
            return;
        }
        build::parse_unnamed(&mut self.sout, &sql[st.span.clone()]);
        build::bind_unnamed(&mut self.sout);
        build::describe_portal(&mut self.sout, b"");
        build::execute_unnamed(&mut self.sout);
        use outstanding::Step::{Bind, DescribePortal, Execute, Parse};
        for step in [Parse, Bind, DescribePortal, Execute] {
            self.outstanding.push(Pending::Step(step, early.clone()));
        }
    }

    /// Requests the proxy answers alone when no transaction is open, so that
    /// they never wait for the pool: Close of a named statement (it only
    /// forgets the client's name) and the refused fastpath call.
    fn answer_without_server(&mut self, tag: u8, msg: &[u8]) -> bool {
        match (tag, msg.get(frame::HEADER_LEN)) {
            (b'C', Some(b'S')) => {
                let Some((name, _)) = frame::cstr(&msg[frame::HEADER_LEN + 1..]) else { return false };
                if name.is_empty() {
                    return false;
                }
                self.statements.remove(name);
                self.outstanding.push(Pending::Step(outstanding::Step::Close, outstanding::Owner::Synthetic));
                true
            }
            (b'F', _) => {
                let refused = fastpath_refusal();
                crate::metrics::statement_refused(refused.kind);
                build::error_response(
                    &mut self.cout,
                    build::Severity::Error,
                    refused.code,
                    &refused.message,
                    refused.hint,
                );
                build::ready_for_query(&mut self.cout, IDLE);
                true
            }
            _ => false,
        }
    }

    /// The fastpath interface can call `set_config` by OID with no SQL text
    /// to inspect, so it is refused; a stand-in keeps the server's
    /// transaction state as a real error would leave it.
    fn on_function_call(&mut self) {
        build::query(&mut self.sout, inject::STAND_IN);
        self.unnamed_on_server = false;
        if std::mem::take(&mut self.unit_tx) {
            self.predicted = None;
        }
        self.unit_open = false;
        let refused = fastpath_refusal();
        self.outstanding.push(Pending::Query(QueryPlan::new(vec![Role::StandIn(refused)], None)));
    }

    /// Filters every complete server message into the client's buffer.
    fn process_server(&mut self) -> Result<(), Fatal> {
        let Some(server) = self.server.as_mut() else { return Ok(()) };
        let rbuf = &mut server.conn.rbuf;
        while let Some(h) = frame::complete_header(rbuf, MAX_SERVER_MESSAGE)
            .map_err(|e| Fatal::new("08P01", format!("invalid message from server: {e}")))?
        {
            let msg = rbuf.split_to(h.total);
            let body = &msg[frame::HEADER_LEN..];
            let action = self.outstanding.on_message(h.tag, body);
            if h.tag == b'Z' {
                self.server_status = body.first().copied().unwrap_or(IDLE);
                if self.outstanding.units() == 0 {
                    self.predicted = Some(self.server_status);
                    // Only an open (chained) transaction still needs the tenant
                    // again; in I the next unit injects anyway, in E it must not.
                    if self.server_status != b'T' {
                        self.reinject = false;
                    }
                }
            }
            match action {
                Action::Forward => self.cout.extend_from_slice(&msg),
                Action::Drop => {}
                Action::Replace(b) => self.cout.extend_from_slice(&b),
            }
            self.outstanding.drain_synthetic(&mut self.cout);
            for (id, hidden) in self.outstanding.take_unprepared() {
                server.conn.prepared.remove(&id);
                if !hidden {
                    // The client's own Parse failed: PostgreSQL would not have the name.
                    self.statements.forget_id(id);
                }
            }
        }
        if let Some(row) = self.outstanding.take_captured() {
            self.finish_capture(&row);
        }
        // A failed internal query leaves the server's settings unknown.
        self.dirty |= self.outstanding.take_internal_failed();
        Ok(())
    }

    /// Gives the server back once the transaction is over and nothing is owed.
    async fn maybe_release(&mut self) {
        let idle = self.outstanding.is_empty()
            && !self.unit_open
            && self.server_status == IDLE
            && self.sout.is_empty()
            && self.predicted == Some(IDLE);
        if !idle {
            return;
        }
        if self.start_capture() {
            return;
        }
        if std::mem::take(&mut self.carry_ready) {
            // Its own transaction: no rollback can bring the values back.
            build::query(&mut self.sout, inject::CLEAR_CARRY.as_bytes());
            self.outstanding.push(Pending::Internal { capture: false });
            return;
        }
        if let Some(pooled) = self.server.take() {
            self.count_transaction();
            *self.cancel.slot.lock().await = None;
            if pooled.conn.rbuf.is_empty() && !std::mem::take(&mut self.dirty) {
                self.shared.pool.checkin(pooled);
            }
        }
    }

    async fn wait_event(&mut self) -> Result<Event, Fatal> {
        shrink_if_idle(&mut self.cout);
        shrink_if_idle(&mut self.sout);
        let read_client = !has_whole_message(&self.cin) || self.cin.len() < HIGH_WATER;
        let read_server = self.cout.len() < HIGH_WATER;
        poll_fn(|cx| {
            let mut wrote = false;
            let pending = self.cout.len();
            wrote |= drive_write(cx, &mut self.client, &mut self.cout, &mut self.client_unflushed)
                .map_err(|_| Fatal::new("08006", "client connection lost"))?;
            if wrote {
                self.traffic.bytes_out += (pending - self.cout.len()) as u64;
            }
            if let Some(server) = self.server.as_mut() {
                wrote |= drive_write(cx, &mut server.conn.stream, &mut self.sout, &mut self.server_unflushed)
                    .map_err(|_| server_lost())?;
                if read_server {
                    reserve(&mut server.conn.rbuf);
                    match poll_read_buf(Pin::new(&mut server.conn.stream), cx, &mut server.conn.rbuf) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Ok(Event::ServerEof)),
                        Poll::Ready(Ok(_)) => return Poll::Ready(Ok(Event::ServerData)),
                        Poll::Pending => {}
                    }
                }
            }
            if read_client {
                reserve_client(&mut self.cin);
                match poll_read_buf(Pin::new(&mut self.client), cx, &mut self.cin) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Ok(Event::ClientEof)),
                    Poll::Ready(Ok(n)) => {
                        self.traffic.bytes_in += n as u64;
                        return Poll::Ready(Ok(Event::ClientData));
                    }
                    Poll::Pending => {}
                }
            }
            if wrote {
                Poll::Ready(Ok(Event::Wrote))
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Ends the session: flushes what the client is owed, and returns the
    /// server to the pool only if it is idle and clean; otherwise cancels any
    /// running query and closes it, so no open transaction survives.
    async fn finish(&mut self) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.flush_client()).await;
        let Some(pooled) = self.server.take() else { return };
        self.count_transaction();
        *self.cancel.slot.lock().await = None;
        let settled = self.changed.is_empty() && !self.reset_all && self.sout.is_empty();
        // A connection still carrying this client's proof is never reused.
        let clean = self.outstanding.is_empty()
            && !self.unit_open
            && self.server_status == IDLE
            && !self.dirty
            && !self.carry_ready
            && settled;
        if clean && pooled.conn.rbuf.is_empty() {
            self.shared.pool.checkin(pooled);
            return;
        }
        if !self.outstanding.is_empty() {
            let (pid, secret) = pooled.conn.key;
            let addr = self.shared.pool.upstream_addr();
            tokio::spawn(crate::cancel::send_cancel(addr, ServerKey { pid, secret }));
        }
        tracing::info!(peer = %self.peer, "closing a server connection left mid-transaction");
        drop(pooled);
    }

    /// Between transactions, with nothing owed either way: a drain may end
    /// the session here without losing anything.
    fn is_idle(&self) -> bool {
        self.server.is_none() && self.predicted == Some(IDLE) && !self.unit_open && self.outstanding.is_empty()
    }

    /// A server connection goes back: one transaction, for the metrics.
    fn count_transaction(&mut self) {
        let hot = crate::metrics::hot();
        self.traffic.flush();
        hot.transactions.increment(1);
        hot.transaction_seconds.record(self.attached_at.elapsed().as_secs_f64());
        self.counted.stats().transaction();
    }

    async fn flush_client(&mut self) {
        use tokio::io::AsyncWriteExt;
        let _ = self.client.write_all(&self.cout).await;
        let _ = self.client.flush().await;
        self.cout.clear();
    }
}

fn has_whole_message(buf: &[u8]) -> bool {
    matches!(frame::complete_header(buf, usize::MAX), Ok(Some(_)))
}

/// Room to read a client's next message. Most clients sit idle most of the
/// time, so an empty buffer gets only [`IDLE_READ`] bytes (a big one left by
/// a large message is dropped), and a message in progress gets a full chunk:
/// idle clients then cost about 1 KiB of buffer each, not 16.
fn reserve_client(buf: &mut BytesMut) {
    if !buf.is_empty() {
        return reserve(buf);
    }
    if buf.capacity() > 2 * READ_CHUNK {
        *buf = BytesMut::with_capacity(IDLE_READ);
    } else if buf.capacity() < IDLE_READ {
        buf.reserve(IDLE_READ);
    }
}

/// Drops a buffer's allocation once it is empty and oversized (after a big
/// result), so a connection that goes idle gives its memory back.
fn shrink_if_idle(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 4 * READ_CHUNK {
        *buf = BytesMut::new();
    }
}

fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 2 {
        buf.reserve(READ_CHUNK);
    }
}

/// Writes as much of `buf` as the socket takes now, then flushes (TLS buffers
/// records internally). Returns whether anything was written.
fn drive_write<W: AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    w: &mut W,
    buf: &mut BytesMut,
    unflushed: &mut bool,
) -> std::io::Result<bool> {
    let mut wrote = false;
    while !buf.is_empty() {
        match Pin::new(&mut *w).poll_write(cx, buf) {
            Poll::Ready(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => {
                buf.advance(n);
                wrote = true;
                *unflushed = true;
            }
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => return Ok(wrote),
        }
    }
    if *unflushed {
        if let Poll::Ready(r) = Pin::new(&mut *w).poll_flush(cx) {
            r?;
            *unflushed = false;
        }
    }
    Ok(wrote)
}

/// Message types a client may send after startup.
const FRONTEND_TAGS: &[u8] = b"QFPBDECSHdcfX";

fn invalid_type(tag: u8) -> Fatal {
    Fatal::new("08P01", format!("invalid frontend message type {tag}"))
}

fn shutting_down() -> Fatal {
    Fatal::new("57P01", "terminating connection due to administrator command")
        .hint("pgtenant is shutting down; reconnect to another instance")
}

fn server_lost() -> Fatal {
    Fatal::new("08006", "the server connection was lost")
        .hint("the transaction in progress was lost; reconnect and retry")
}

fn pool_fatal(e: PoolError) -> Fatal {
    match e {
        PoolError::Timeout(d) => Fatal::new("53300", format!("no server connection became free within {} s", d.as_secs()))
            .hint("all upstream.pool_size connections, or this tenant's upstream.max_connections_per_tenant, are busy; retry later or raise those limits / upstream.pool_timeout_seconds"),
        PoolError::Connect(e) => Fatal::new("08006", format!("pgtenant could not connect to the upstream database: {e}")),
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn fastpath_refusal() -> Refused {
    let message = "the fastpath function call interface is not supported by pgtenant".into();
    Refused { kind: "fastpath", ..Refused::privilege(message) }
}
