//! Session state on the server connection: settings that follow the client,
//! state that cannot (and closes the connection instead of pooling it), and
//! prepared statements dropped by `DISCARD ALL`.

use super::{pool_fatal, Session};
use crate::server::Shared;
use crate::session::outstanding::Pending;
use crate::session::params::{self, Settings};
use crate::session::Fatal;
use crate::sql::inspect::{DiscardKind, Inspection, SessionEffect};
use crate::upstream::Owner;
use crate::wire::build;

impl Session {
    /// `DISCARD ALL` and `DEALLOCATE ALL` drop every prepared statement on the
    /// server and, for the client, its own: forget both sides' tables. Should
    /// the statement fail after all, re-preparing is still safe (see
    /// [`Self::prepare_on_server`]).
    pub(super) fn note_deallocation(&mut self, insp: &Inspection) {
        let drops_all = insp.statements.iter().any(|s| {
            matches!(
                s.session,
                Some(SessionEffect::Discard(DiscardKind::All) | SessionEffect::Deallocate { name: None })
            )
        });
        if drops_all {
            self.statements.clear();
            if let Some(server) = self.server.as_mut() {
                server.conn.prepared.clear();
            }
        }
    }

    /// Brings a newly attached server's session settings in line with the
    /// client's, with one hidden Query in the same write as what follows.
    pub(super) fn sync_settings(&mut self) {
        let me = self.cancel.pid as u64;
        let server = self.server.as_mut().expect("a server is attached");
        let current = &server.conn.settings;
        // Sequence state (lastval, currval) of another client must not show.
        let switching = std::mem::replace(&mut server.conn.last_client, me) != me;
        let mut resets = params::reset_statements(&self.desired, current);
        if switching {
            resets.insert(0, "DISCARD SEQUENCES".to_string());
        }
        let sets = params::set_statement(&self.desired, current, self.standard_conforming_strings);
        // Two queries: should the values fail to apply, the resets still hold,
        // so the client never runs with another client's settings.
        for sql in [(!resets.is_empty()).then(|| resets.join("; ")), sets].into_iter().flatten() {
            build::query(&mut self.sout, sql.as_bytes());
            self.outstanding.push(Pending::Internal { capture: false });
            self.unnamed_on_server = false;
        }
        server.conn.settings = self.desired.clone();
    }

    /// Records what the client's statements do to session state: settings
    /// are read back later; state that cannot follow the client marks the
    /// server connection so it is closed instead of pooled.
    pub(super) fn note_session_effects(&mut self, insp: &Inspection, sql: &[u8]) {
        for effect in insp.statements.iter().filter_map(|s| s.session.as_ref()) {
            match effect {
                SessionEffect::Set { local: true, .. } => {}
                SessionEffect::Set { name, .. } | SessionEffect::Reset { name } => {
                    if params::valid_name(name) && !params::NOT_FOLLOWED.contains(&name.as_str()) {
                        self.changed.insert(name.clone());
                        // RESET returns to the startup packet's value, as on PostgreSQL.
                        match effect {
                            SessionEffect::Reset { .. } if self.startup.contains_key(name) => {
                                self.reset_to_startup.insert(name.clone());
                            }
                            _ => {
                                self.reset_to_startup.remove(name);
                            }
                        }
                    } else {
                        self.dirty = true;
                    }
                }
                SessionEffect::ResetAll | SessionEffect::Discard(DiscardKind::All) => {
                    self.reset_all = true;
                    self.reset_to_startup.extend(self.startup.keys().cloned());
                }
                SessionEffect::Unlisten
                | SessionEffect::Deallocate { .. }
                | SessionEffect::Discard(DiscardKind::Plans) => {}
                _ => self.dirty = true,
            }
        }
        // set_config's third argument may make it session-wide, under any name.
        if params::mentions_set_config(sql) {
            self.dirty = true;
        }
    }

    /// After a transaction that changed settings, reads them back before the
    /// server is released. Returns whether a capture query was sent.
    pub(super) fn start_capture(&mut self) -> bool {
        if self.changed.is_empty() && !self.reset_all {
            return false;
        }
        let mut names = std::mem::take(&mut self.changed);
        names.extend(self.reset_to_startup.iter().cloned());
        if std::mem::take(&mut self.reset_all) {
            names.extend(self.desired.keys().cloned());
            if let Some(server) = &self.server {
                names.extend(server.conn.settings.keys().cloned());
            }
        }
        if names.is_empty() {
            return false;
        }
        self.capturing = names.into_iter().collect();
        build::query(&mut self.sout, params::capture_sql(&self.capturing).as_bytes());
        self.unnamed_on_server = false;
        // Hold the client's next messages until the values are known and, if
        // a RESET went to the server default instead of the startup value,
        // corrected: they must run with the settings the client expects.
        self.predicted = None;
        self.outstanding.push(Pending::Internal { capture: true });
        true
    }

    /// Takes in the values a capture query read.
    pub(super) fn finish_capture(&mut self, row: &[u8]) {
        let names = std::mem::take(&mut self.capturing);
        let Some(values) = crate::wire::row::parse_data_row(row).filter(|v| v.len() == names.len()) else {
            self.dirty = true;
            return;
        };
        let Some(server) = self.server.as_mut() else { return };
        let actual = &mut server.conn.settings;
        for (name, value) in names.into_iter().zip(values) {
            match value {
                Some(v) => actual.insert(name, v),
                None => actual.remove(&name),
            };
        }
        // What the client expects: what the server has, except that a RESET
        // went back to the startup value (this server's reset value is the
        // default; the next checkout applies the difference).
        self.desired = actual.clone();
        for name in std::mem::take(&mut self.reset_to_startup) {
            if let Some(v) = self.startup.get(&name) {
                self.desired.insert(name, v.clone());
            }
        }
        // Still attached: correct the server now, ahead of the client's next message.
        self.sync_settings();
    }
}

/// Applies a client's startup settings on a server connection, so that bad
/// values fail the login as they would on PostgreSQL; returns the
/// ParameterStatus values the server reported for them.
pub(super) async fn apply_startup_settings(
    shared: &Shared,
    owner: &Owner,
    settings: &Settings,
) -> Result<Vec<(String, String)>, Fatal> {
    let mut pooled = shared.pool.checkout(owner, shared.config().upstream.pool_timeout).await.map_err(pool_fatal)?;
    let Some(sql) = params::apply_sql(settings, &pooled.conn.settings, true) else {
        shared.pool.checkin(pooled);
        return Ok(Vec::new());
    };
    match pooled.conn.simple_query(&sql).await {
        Ok(Ok(outcome)) => {
            pooled.conn.settings = settings.clone();
            shared.pool.checkin(pooled);
            Ok(outcome.reported)
        }
        Ok(Err(e)) => {
            // The failed query ran in its own transaction: nothing changed.
            shared.pool.checkin(pooled);
            Err(Fatal::new(startup_sqlstate(&e.code), e.message))
        }
        Err(e) => Err(Fatal::new("08006", format!("pgtenant could not reach the upstream database: {e}"))),
    }
}

/// Replaces or adds reported values in the greeting's parameter list.
pub(super) fn overlay(params: &mut Vec<(String, String)>, reported: Vec<(String, String)>) {
    for (name, value) in reported {
        match params.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => params.push((name, value)),
        }
    }
}

/// The SQLSTATE to report for a startup setting PostgreSQL rejected (a
/// `Fatal` carries a static code, so the likely ones are listed).
pub(super) fn startup_sqlstate(code: &str) -> &'static str {
    ["42704", "22023", "42501", "55P02", "0A000", "22P02", "42602"].into_iter().find(|c| *c == code).unwrap_or("22023")
}
