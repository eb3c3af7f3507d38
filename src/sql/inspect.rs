//! Splits a query string into statements like the server and classifies each one.

use std::fmt;
use std::ops::{Range, RangeInclusive};

use super::lexer::{Lexer, Token, TokenKind, MAX_IDENT_LEN};

/// The proxy's lexer depends on this setting, so clients may not change it.
const SCS_SETTING: &str = "standard_conforming_strings";
const CLIENT_ENCODING: &str = "client_encoding";

/// Client-only encodings (PostgreSQL's alias table, normalised like
/// `clean_encoding_name`: ASCII alphanumerics only, lowercase) whose multibyte
/// characters may contain `'` or `\` bytes, hiding quotes from a byte-level lexer.
const UNSAFE_ENCODINGS: &[&str] = &[
    "sjis",
    "shiftjis",
    "mskanji",
    "win932",
    "windows932",
    "shiftjis2004",
    "big5",
    "win950",
    "windows950",
    "gbk",
    "win936",
    "windows936",
    "cp936",
    "uhc",
    "win949",
    "windows949",
    "gb18030",
    "johab",
];

/// Session-level advisory lock functions (the `_xact_` variants end with the transaction).
const ADVISORY_LOCKS: &[&str] = &[
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];

/// Classifies client SQL for the proxy; cheap to clone and share.
#[derive(Debug, Clone)]
pub struct Inspector {
    tenant_setting: String,
    /// Names no statement may change (lowercase), including identifier-truncated variants.
    protected: Vec<String>,
    /// Most dot-separated parts in any protected name; longer names cannot match.
    max_parts: usize,
}

/// The result of inspecting one query string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inspection {
    /// Non-empty statements in order.
    pub statements: Vec<Statement>,
    /// Lexing failed (unterminated quote/comment/...): PostgreSQL will reject the whole text with a syntax error.
    pub lex_error: bool,
}

impl Inspection {
    /// The first refusal of any statement, if any.
    pub fn refusal(&self) -> Option<&Refusal> {
        self.statements.iter().find_map(|s| s.refusal.as_ref())
    }
}

/// One statement of a query string and what it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// Byte range of the statement: from its first token to the end of its last token (no leading/trailing whitespace or comments, no ';').
    pub span: Range<usize>,
    /// Transaction control performed by the statement's leading keywords.
    pub tx: TxControl,
    /// Cannot run inside a transaction block (VACUUM, CREATE INDEX CONCURRENTLY, ...).
    pub no_tx_block: bool,
    /// Why the proxy must not forward this statement, if it must not.
    pub refusal: Option<Refusal>,
    /// Session state the statement creates or changes, for the pooler.
    pub session: Option<SessionEffect>,
}

/// Transaction control done by a statement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TxControl {
    /// No transaction control.
    #[default]
    None,
    /// `BEGIN` / `START TRANSACTION`.
    Begin,
    /// `COMMIT`, `END`, `ROLLBACK`, `ABORT`, `PREPARE TRANSACTION`.
    End,
    /// `COMMIT AND CHAIN` and friends: ends the transaction and starts a new one.
    EndAndChain,
}

/// A statement the proxy refuses, and which setting it endangers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The setting the statement could change (lowercase).
    pub setting: String,
    /// What construct was refused.
    pub reason: RefusalReason,
}

/// The construct that caused a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// `SET`/`RESET` of a protected setting (plain, `ALTER ROLE ... SET`, function `SET` clauses, ...).
    SetCommand,
    /// `set_config()` called with a protected setting name.
    SetConfig,
    /// `set_config()` whose setting name is not a plain string literal.
    DynamicSetConfig,
    /// `client_encoding` changed to an encoding that can hide quotes, or to a non-constant.
    UnsafeClientEncoding,
    /// `UPDATE pg_settings`, which calls `set_config()` through a rule.
    SettingsCatalog,
}

impl Refusal {
    /// A client-facing error message naming the setting.
    pub fn message(&self) -> String {
        let s = &self.setting;
        let why = match s.as_str() {
            SCS_SETTING | CLIENT_ENCODING => "pgtenant relies on it to read your queries safely",
            _ => "the tenant comes from your token",
        };
        match self.reason {
            RefusalReason::SetCommand | RefusalReason::SetConfig => {
                format!("changing \"{s}\" is not allowed through pgtenant; {why}")
            }
            RefusalReason::DynamicSetConfig => format!(
                "set_config() with a setting name that is not a plain string literal is not \
                 allowed through pgtenant because it could change \"{s}\"; {why}"
            ),
            RefusalReason::UnsafeClientEncoding => format!(
                "changing \"{s}\" to SJIS, BIG5, GBK, UHC, GB18030, JOHAB or to a non-constant \
                 value is not allowed through pgtenant; {why}"
            ),
            RefusalReason::SettingsCatalog => format!(
                "updating pg_settings is not allowed through pgtenant because it could change \
                 \"{s}\"; {why}"
            ),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

/// Session state a statement creates or changes; a pooled server connection carrying it
/// cannot be handed to another client without cleanup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEffect {
    /// `SET [SESSION|LOCAL] name ...` (also `SET TIME ZONE`, `SET NAMES`, `SET ROLE`, ...).
    Set {
        /// Setting name, lowercase for unquoted parts, dotted parts joined with `.`.
        name: String,
        /// `SET LOCAL`, `SET TRANSACTION` or `SET CONSTRAINTS`: ends with the transaction.
        local: bool,
    },
    /// `RESET name`.
    Reset {
        /// Setting name.
        name: String,
    },
    /// `RESET ALL`.
    ResetAll,
    /// `DISCARD ...`.
    Discard(DiscardKind),
    /// `LISTEN`.
    Listen,
    /// `UNLISTEN`.
    Unlisten,
    /// `PREPARE name ...`.
    Prepare {
        /// Prepared statement name.
        name: String,
    },
    /// `DEALLOCATE [PREPARE] name|ALL`.
    Deallocate {
        /// The statement name, `None` for `ALL`.
        name: Option<String>,
    },
    /// `DECLARE ... WITH HOLD` cursor, which outlives the transaction.
    DeclareWithHold,
    /// Temporary table, view or sequence (`CREATE TEMP ...`, `SELECT ... INTO TEMP`).
    CreateTemp,
    /// Call of a session-level advisory lock function.
    AdvisoryLock,
}

/// What `DISCARD` throws away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscardKind {
    /// `DISCARD ALL`.
    All,
    /// `DISCARD PLANS`.
    Plans,
    /// `DISCARD TEMP` / `DISCARD TEMPORARY`.
    Temp,
    /// `DISCARD SEQUENCES`.
    Sequences,
}

impl Inspector {
    /// Creates an inspector protecting `tenant_setting` (matched case-insensitively)
    /// and `standard_conforming_strings`.
    pub fn new(tenant_setting: &str) -> Self {
        let tenant = tenant_setting.to_ascii_lowercase();
        let mut protected = vec![tenant.clone(), SCS_SETTING.to_string()];
        // The server truncates each identifier of `SET a.b` to 63 bytes, so a configured
        // name with a longer part is reachable through its truncated spelling too.
        let truncated = truncate_parts(&tenant);
        if truncated != tenant {
            protected.push(truncated);
        }
        let max_parts = protected.iter().map(|p| p.split('.').count()).max().unwrap_or(1);
        Inspector {
            tenant_setting: tenant,
            protected,
            max_parts,
        }
    }

    /// The protected tenant setting name, lowercase.
    pub fn tenant_setting(&self) -> &str {
        &self.tenant_setting
    }

    /// Splits `sql` into statements exactly as PostgreSQL's parser would and classifies each.
    pub fn inspect(&self, sql: &[u8], standard_conforming_strings: bool) -> Inspection {
        let mut inspection = Inspection::default();
        let mut splitter = Splitter::default();
        let mut current: Vec<Token<'_>> = Vec::new();
        for item in Lexer::new(sql, standard_conforming_strings) {
            let Ok(tok) = item else {
                inspection.lex_error = true;
                break;
            };
            if splitter.ends_statement(&current, &tok) {
                self.flush(&mut current, &mut inspection.statements);
                splitter = Splitter::default();
            } else {
                current.push(tok);
            }
        }
        self.flush(&mut current, &mut inspection.statements);
        inspection
    }

    fn flush(&self, current: &mut Vec<Token<'_>>, out: &mut Vec<Statement>) {
        if let (Some(first), Some(last)) = (current.first(), current.last()) {
            let span = first.span.start..last.span.end;
            out.push(self.classify(current, span));
            current.clear();
        }
    }

    fn classify(&self, toks: &[Token<'_>], span: Range<usize>) -> Statement {
        let lead = lead(toks);
        let session = lead
            .session
            .or_else(|| select_into_temp(toks))
            .or_else(|| advisory_lock(toks));
        Statement {
            span,
            tx: lead.tx,
            no_tx_block: lead.no_tx_block,
            refusal: self.refusal(toks),
            session,
        }
    }

    /// Scans every token, not just the leading ones, so that `SET` clauses inside
    /// `ALTER ROLE`, `CREATE FUNCTION` and the like are caught by the same rule.
    fn refusal(&self, toks: &[Token<'_>]) -> Option<Refusal> {
        let (mut update, mut settings_view) = (false, false);
        for (i, tok) in toks.iter().enumerate() {
            if tok.is_keyword("set") || tok.is_keyword("reset") {
                if let Some(refusal) = self.check_set(toks, i) {
                    return Some(refusal);
                }
            }
            update |= tok.is_keyword("update");
            if tok.is_identifier() {
                if ident_is(tok, "set_config") {
                    if let Some(refusal) = self.check_set_config(toks, i) {
                        return Some(refusal);
                    }
                }
                settings_view |= ident_is(tok, "pg_settings");
            }
        }
        (update && settings_view).then(|| refuse(&self.tenant_setting, RefusalReason::SettingsCatalog))
    }

    /// `SET`/`RESET` at `i`: the name may follow directly or after `SESSION`/`LOCAL`.
    /// Both readings are tried because a protected name may itself start with one of them.
    fn check_set(&self, toks: &[Token<'_>], i: usize) -> Option<Refusal> {
        let is_set = toks[i].is_keyword("set");
        let mut j = i + 1;
        for _ in 0..3 {
            if let Some(refusal) = self.check_set_target(toks, j, is_set) {
                return Some(refusal);
            }
            if !matches!(kw(toks, j), b"session" | b"local") {
                break;
            }
            j += 1;
        }
        None
    }

    fn check_set_target(&self, toks: &[Token<'_>], j: usize, is_set: bool) -> Option<Refusal> {
        let name = dotted_name(toks, j, self.max_parts)?;
        if let Some(p) = self.protected.iter().find(|p| name.matches(p.as_bytes())) {
            return Some(refuse(p, RefusalReason::SetCommand));
        }
        if !is_set {
            return None;
        }
        let assigns = toks
            .get(name.end)
            .is_some_and(|t| t.is_keyword("to") || t.value_bytes() == Some(b"="));
        // `SET NAMES 'x'` has no `=`; `UPDATE t SET names = ...` is a column.
        let encoding = (name.matches(CLIENT_ENCODING.as_bytes()) && assigns)
            || (toks[j].is_keyword("names") && name.end == j + 1 && !assigns);
        let value_at = if assigns { name.end + 1 } else { name.end };
        (encoding && unsafe_encoding_values(toks, value_at))
            .then(|| refuse(CLIENT_ENCODING, RefusalReason::UnsafeClientEncoding))
    }

    /// `set_config` at `i` is allowed only as `set_config('<literal>', ...` naming an
    /// unprotected setting; for `client_encoding` the value must be a safe literal too.
    fn check_set_config(&self, toks: &[Token<'_>], i: usize) -> Option<Refusal> {
        let opened = toks.get(i + 1).is_some_and(|t| t.is_punct(b'('));
        let Some(name) = plain_literal_arg(toks, i + 2).filter(|_| opened) else {
            return Some(refuse(&self.tenant_setting, RefusalReason::DynamicSetConfig));
        };
        if let Some(p) = self.protected.iter().find(|p| name_eq(name, p.as_bytes())) {
            return Some(refuse(p, RefusalReason::SetConfig));
        }
        if name_eq(name, CLIENT_ENCODING.as_bytes()) {
            let safe = plain_literal_arg(toks, i + 4).is_some_and(|v| !is_unsafe_encoding(v));
            if !safe {
                return Some(refuse(CLIENT_ENCODING, RefusalReason::UnsafeClientEncoding));
            }
        }
        None
    }
}

fn refuse(setting: &str, reason: RefusalReason) -> Refusal {
    Refusal {
        setting: setting.to_string(),
        reason,
    }
}

/// Truncates each dot-separated part to the server's identifier length, on a char boundary.
fn truncate_parts(name: &str) -> String {
    let parts: Vec<&str> = name
        .split('.')
        .map(|part| {
            let mut end = part.len().min(MAX_IDENT_LEN);
            while !part.is_char_boundary(end) {
                end -= 1;
            }
            &part[..end]
        })
        .collect();
    parts.join(".")
}

/// Tracks where PostgreSQL's grammar ends a statement: a `;` outside parentheses and
/// outside a SQL-standard routine body (`BEGIN ATOMIC ... END`), mirroring psql's
/// heuristic but requiring `ATOMIC` so a routine merely *named* `begin` cannot swallow
/// the statements after it.
#[derive(Debug, Default)]
struct Splitter {
    parens: usize,
    atomic: usize,
    routine: bool,
}

impl Splitter {
    /// Feeds the next token given the statement so far; true if it is the terminating `;`.
    fn ends_statement(&mut self, stmt: &[Token<'_>], tok: &Token<'_>) -> bool {
        match tok.kind {
            TokenKind::Punct(b'(') => self.parens += 1,
            TokenKind::Punct(b')') => self.parens = self.parens.saturating_sub(1),
            TokenKind::Punct(b';') => return self.parens == 0 && self.atomic == 0,
            TokenKind::Ident if self.parens == 0 => self.track_routine(stmt, tok),
            _ => {}
        }
        false
    }

    fn track_routine(&mut self, stmt: &[Token<'_>], tok: &Token<'_>) {
        if !self.routine {
            let header = match stmt {
                [c] => c.is_keyword("create"),
                [c, o, r] => c.is_keyword("create") && o.is_keyword("or") && r.is_keyword("replace"),
                _ => false,
            };
            self.routine = header && (tok.is_keyword("function") || tok.is_keyword("procedure"));
            return;
        }
        let after = |word: &str| stmt.last().is_some_and(|p| p.is_keyword(word));
        if tok.is_keyword("atomic") && after("begin") {
            self.atomic += 1;
        } else if self.atomic > 0 && !after("as") {
            // `AS end` / `AS case` are column labels, not block delimiters.
            if tok.is_keyword("case") {
                self.atomic += 1;
            } else if tok.is_keyword("end") {
                self.atomic -= 1;
            }
        }
    }
}

/// A possibly qualified setting name: `a`, `"a.b"`, `a . "b"`, `U&"\0061".b`, ...
struct Name<'t> {
    /// Decoded parts; `None` for a `U&` identifier the server would reject.
    parts: Vec<Option<&'t [u8]>>,
    /// Token index just past the name.
    end: usize,
    /// More parts than `max_parts`: cannot equal any protected name.
    overflow: bool,
}

fn dotted_name<'t>(toks: &'t [Token<'_>], start: usize, max_parts: usize) -> Option<Name<'t>> {
    let first = toks.get(start).filter(|t| t.is_identifier())?;
    let mut name = Name {
        parts: vec![first.value_bytes()],
        end: start + 1,
        overflow: false,
    };
    while toks.get(name.end).is_some_and(|t| t.is_punct(b'.'))
        && toks.get(name.end + 1).is_some_and(Token::is_identifier)
    {
        if name.parts.len() >= max_parts {
            name.overflow = true;
            break;
        }
        name.parts.push(toks[name.end + 1].value_bytes());
        name.end += 2;
    }
    Some(name)
}

impl Name<'_> {
    /// Whether the server could resolve this name to `target`. Each part may have been
    /// truncated to 63 bytes (less when backing off a multibyte character), and parts
    /// may contain dots themselves, so this walks `target` tracking every reachable offset.
    fn matches(&self, target: &[u8]) -> bool {
        if self.overflow {
            return false;
        }
        if self.parts.iter().any(Option::is_none) {
            return true;
        }
        let mut reach = vec![false; target.len() + 1];
        reach[0] = true;
        for (k, part) in self.parts.iter().flatten().enumerate() {
            let mut next = vec![false; target.len() + 1];
            for pos in (0..=target.len()).filter(|&p| reach[p]) {
                let at = match (k, target.get(pos)) {
                    (0, _) => pos,
                    (_, Some(b'.')) => pos + 1,
                    _ => continue,
                };
                for len in kept_lengths(part.len()) {
                    if target.get(at..at + len).is_some_and(|t| name_eq(&part[..len], t)) {
                        next[at + len] = true;
                    }
                }
            }
            if !next.contains(&true) {
                return false;
            }
            reach = next;
        }
        reach[target.len()]
    }

    fn text(&self) -> String {
        let parts: Vec<String> = self
            .parts
            .iter()
            .map(|p| String::from_utf8_lossy(p.unwrap_or(b"?")).into_owned())
            .collect();
        parts.join(".")
    }
}

fn kept_lengths(len: usize) -> RangeInclusive<usize> {
    if len > MAX_IDENT_LEN {
        MAX_IDENT_LEN - 3..=MAX_IDENT_LEN
    } else {
        len..=len
    }
}

/// Case-insensitive name comparison. A non-ASCII byte matches any letter because the
/// server lowercases unquoted identifiers with `tolower()` in single-byte encodings,
/// where a locale may map such a byte to an ASCII letter (e.g. Turkish dotted I).
fn name_eq(candidate: &[u8], target: &[u8]) -> bool {
    candidate.len() == target.len()
        && candidate
            .iter()
            .zip(target)
            .all(|(&c, &t)| c.eq_ignore_ascii_case(&t) || (c >= 0x80 && t.is_ascii_alphabetic()))
}

/// An identifier token that is (or, being undecodable, might be) `name`.
fn ident_is(tok: &Token<'_>, name: &str) -> bool {
    tok.value_bytes().is_none_or(|v| name_eq(v, name.as_bytes()))
}

/// A function argument at `i` that is a plain string literal followed by `,`.
fn plain_literal_arg<'t>(toks: &'t [Token<'_>], i: usize) -> Option<&'t [u8]> {
    let tok = toks.get(i)?;
    let plain = matches!(
        tok.kind,
        TokenKind::String | TokenKind::EscapeString | TokenKind::DollarString
    );
    let comma = toks.get(i + 1).is_some_and(|t| t.is_punct(b','));
    if plain && comma {
        tok.value_bytes()
    } else {
        None
    }
}

fn is_unsafe_encoding(value: &[u8]) -> bool {
    let clean: Vec<u8> = value
        .iter()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(u8::to_ascii_lowercase)
        .collect();
    UNSAFE_ENCODINGS.iter().any(|e| e.as_bytes() == clean)
}

/// Checks a `SET` value list (`v [, v ...]`) starting at `k`: true if any value is an
/// unsafe encoding or not a constant. `FROM CURRENT` keeps the current, vetted value.
fn unsafe_encoding_values(toks: &[Token<'_>], mut k: usize) -> bool {
    if kw(toks, k) == b"from" && kw(toks, k + 1) == b"current" {
        return false;
    }
    while let Some(tok) = toks.get(k) {
        let constant = matches!(
            tok.kind,
            TokenKind::Ident
                | TokenKind::QuotedIdent
                | TokenKind::UnicodeIdent
                | TokenKind::String
                | TokenKind::EscapeString
                | TokenKind::UnicodeString
                | TokenKind::NationalString
                | TokenKind::DollarString
                | TokenKind::Number
        );
        match tok.value_bytes() {
            Some(v) if constant && !is_unsafe_encoding(v) => {}
            _ => return true,
        }
        if !toks.get(k + 1).is_some_and(|t| t.is_punct(b',')) {
            return false;
        }
        k += 2;
    }
    false
}

/// The lowercase keyword at `i`, or an empty slice if that token is not an unquoted identifier.
fn kw<'t>(toks: &'t [Token<'_>], i: usize) -> &'t [u8] {
    match toks.get(i) {
        Some(t) if t.kind == TokenKind::Ident => t.value_bytes().unwrap_or_default(),
        _ => b"",
    }
}

fn lossy_value(tok: &Token<'_>) -> String {
    String::from_utf8_lossy(tok.value_bytes().unwrap_or(b"?")).into_owned()
}

/// What the statement's leading keywords say.
#[derive(Debug, Default)]
struct Lead {
    tx: TxControl,
    no_tx_block: bool,
    session: Option<SessionEffect>,
}

impl Lead {
    fn tx(tx: TxControl) -> Self {
        Lead {
            tx,
            ..Lead::default()
        }
    }

    fn no_tx(no_tx_block: bool) -> Self {
        Lead {
            no_tx_block,
            ..Lead::default()
        }
    }

    fn session(session: Option<SessionEffect>) -> Self {
        Lead {
            session,
            ..Lead::default()
        }
    }
}

fn lead(toks: &[Token<'_>]) -> Lead {
    let second = kw(toks, 1);
    match kw(toks, 0) {
        b"begin" => Lead::tx(TxControl::Begin),
        b"start" if second == b"transaction" => Lead::tx(TxControl::Begin),
        b"commit" | b"rollback" if second == b"prepared" => Lead::no_tx(true),
        b"commit" | b"end" | b"abort" => Lead::tx(chain(toks)),
        b"rollback" => Lead::tx(rollback(toks)),
        b"prepare" => prepare(toks),
        b"vacuum" => Lead::no_tx(true),
        b"create" => create(toks),
        b"drop" => Lead::no_tx(drop_needs_no_tx(toks)),
        b"alter" => Lead::no_tx(alter_needs_no_tx(toks)),
        b"reindex" => Lead::no_tx(reindex_needs_no_tx(toks)),
        b"cluster" => Lead::no_tx(cluster_all(toks)),
        b"discard" => discard(toks),
        b"set" => Lead::session(set_effect(toks)),
        b"reset" => Lead::session(reset_effect(toks)),
        b"listen" => Lead::session(Some(SessionEffect::Listen)),
        b"unlisten" => Lead::session(Some(SessionEffect::Unlisten)),
        b"deallocate" => Lead::session(deallocate(toks)),
        b"declare" => Lead::session(declare(toks)),
        _ => Lead::default(),
    }
}

fn chain(toks: &[Token<'_>]) -> TxControl {
    let chained = toks
        .windows(2)
        .any(|w| w[0].is_keyword("and") && w[1].is_keyword("chain"));
    if chained {
        TxControl::EndAndChain
    } else {
        TxControl::End
    }
}

fn rollback(toks: &[Token<'_>]) -> TxControl {
    let i = if matches!(kw(toks, 1), b"work" | b"transaction") { 2 } else { 1 };
    if kw(toks, i) == b"to" {
        TxControl::None
    } else {
        chain(toks)
    }
}

fn prepare(toks: &[Token<'_>]) -> Lead {
    if kw(toks, 1) == b"transaction" && toks.get(2).is_some_and(Token::is_string) {
        return Lead::tx(TxControl::End);
    }
    let name = toks.get(1).filter(|t| t.is_identifier()).map(lossy_value);
    Lead::session(name.map(|name| SessionEffect::Prepare { name }))
}

fn create(toks: &[Token<'_>]) -> Lead {
    let i = if kw(toks, 1) == b"or" && kw(toks, 2) == b"replace" { 3 } else { 1 };
    let (a, b, c) = (kw(toks, i), kw(toks, i + 1), kw(toks, i + 2));
    let no_tx_block = matches!(a, b"database" | b"tablespace" | b"subscription")
        || (a == b"index" && b == b"concurrently")
        || (a == b"unique" && b == b"index" && c == b"concurrently");
    let temp = matches!(a, b"temp" | b"temporary")
        || (matches!(a, b"global" | b"local") && matches!(b, b"temp" | b"temporary"));
    Lead {
        no_tx_block,
        session: temp.then_some(SessionEffect::CreateTemp),
        ..Lead::default()
    }
}

fn drop_needs_no_tx(toks: &[Token<'_>]) -> bool {
    match kw(toks, 1) {
        b"database" | b"tablespace" | b"subscription" => true,
        b"index" => kw(toks, 2) == b"concurrently",
        _ => false,
    }
}

fn alter_needs_no_tx(toks: &[Token<'_>]) -> bool {
    let has = |word: &str| toks.iter().any(|t| t.is_keyword(word));
    match kw(toks, 1) {
        b"system" | b"subscription" => true,
        b"database" => toks
            .windows(2)
            .any(|w| w[0].is_keyword("set") && w[1].is_keyword("tablespace")),
        b"table" => has("detach") && has("concurrently"),
        _ => false,
    }
}

/// Index just past the parenthesised group opening at `open`, or the end if unbalanced.
fn after_parens(toks: &[Token<'_>], open: usize) -> usize {
    let mut depth = 0usize;
    for (i, tok) in toks.iter().enumerate().skip(open) {
        if tok.is_punct(b'(') {
            depth += 1;
        } else if tok.is_punct(b')') {
            depth -= 1;
            if depth == 0 {
                return i + 1;
            }
        }
    }
    toks.len()
}

fn reindex_needs_no_tx(toks: &[Token<'_>]) -> bool {
    let mut i = 1;
    if toks.get(1).is_some_and(|t| t.is_punct(b'(')) {
        i = after_parens(toks, 1);
    }
    matches!(kw(toks, i), b"schema" | b"database" | b"system")
        || toks.iter().any(|t| t.is_keyword("concurrently"))
}

/// `CLUSTER`, `CLUSTER VERBOSE` and `CLUSTER (options)` recluster the whole database.
fn cluster_all(toks: &[Token<'_>]) -> bool {
    match toks {
        [_] => true,
        [_, v] => v.is_keyword("verbose"),
        [_, open, ..] => open.is_punct(b'(') && after_parens(toks, 1) == toks.len(),
        [] => false,
    }
}

fn discard(toks: &[Token<'_>]) -> Lead {
    let kind = match kw(toks, 1) {
        b"all" => DiscardKind::All,
        b"plans" => DiscardKind::Plans,
        b"temp" | b"temporary" => DiscardKind::Temp,
        b"sequences" => DiscardKind::Sequences,
        _ => return Lead::default(),
    };
    Lead {
        no_tx_block: kind == DiscardKind::All,
        session: Some(SessionEffect::Discard(kind)),
        ..Lead::default()
    }
}

fn set_effect(toks: &[Token<'_>]) -> Option<SessionEffect> {
    let (i, local) = match kw(toks, 1) {
        b"session" => (2, false),
        b"local" => (2, true),
        _ => (1, false),
    };
    let set = |name: &str, local: bool| {
        Some(SessionEffect::Set {
            name: name.to_string(),
            local,
        })
    };
    let session_kw = i == 2 && !local;
    match (kw(toks, i), kw(toks, i + 1)) {
        (b"authorization", _) if session_kw => set("session_authorization", false),
        (b"characteristics", _) if session_kw => set("session_characteristics", false),
        (b"session", b"authorization") => set("session_authorization", local),
        (b"transaction", _) => set("transaction", true),
        (b"constraints", _) => set("constraints", true),
        (b"time", b"zone") => set("timezone", local),
        (b"names", _) => set(CLIENT_ENCODING, local),
        (b"role", _) => set("role", local),
        (b"xml", b"option") => set("xmloption", local),
        (b"schema", _) if toks.get(i + 1).is_some_and(Token::is_string) => {
            set("search_path", local)
        }
        _ => dotted_name(toks, i, usize::MAX).map(|n| SessionEffect::Set {
            name: n.text(),
            local,
        }),
    }
}

fn reset_effect(toks: &[Token<'_>]) -> Option<SessionEffect> {
    let reset = |name: &str| {
        Some(SessionEffect::Reset {
            name: name.to_string(),
        })
    };
    match (kw(toks, 1), kw(toks, 2)) {
        (b"all", _) => Some(SessionEffect::ResetAll),
        (b"session", b"authorization") => reset("session_authorization"),
        (b"time", b"zone") => reset("timezone"),
        (b"transaction", _) => reset("transaction_isolation"),
        _ => dotted_name(toks, 1, usize::MAX).map(|n| SessionEffect::Reset { name: n.text() }),
    }
}

fn deallocate(toks: &[Token<'_>]) -> Option<SessionEffect> {
    let i = if kw(toks, 1) == b"prepare" && toks.len() > 2 { 2 } else { 1 };
    match toks.get(i) {
        Some(t) if t.is_keyword("all") => Some(SessionEffect::Deallocate { name: None }),
        Some(t) if t.is_identifier() => Some(SessionEffect::Deallocate {
            name: Some(lossy_value(t)),
        }),
        _ => None,
    }
}

/// `WITH HOLD` counts only before `FOR`; the query itself may contain `WITH hold AS (...)`.
fn declare(toks: &[Token<'_>]) -> Option<SessionEffect> {
    let head = toks
        .iter()
        .position(|t| t.is_keyword("for"))
        .unwrap_or(toks.len());
    toks[..head]
        .windows(2)
        .any(|w| w[0].is_keyword("with") && w[1].is_keyword("hold"))
        .then_some(SessionEffect::DeclareWithHold)
}

fn select_into_temp(toks: &[Token<'_>]) -> Option<SessionEffect> {
    let first = toks.first()?;
    if !(first.is_keyword("select") || first.is_keyword("with") || first.is_punct(b'(')) {
        return None;
    }
    let found = toks.iter().enumerate().any(|(i, t)| {
        if !t.is_keyword("into") {
            return false;
        }
        let j = if matches!(kw(toks, i + 1), b"global" | b"local") { i + 2 } else { i + 1 };
        // `INSERT INTO temp VALUES ...` inside a CTE targets a table named temp.
        matches!(kw(toks, j), b"temp" | b"temporary")
            && toks.get(j + 1).is_some_and(Token::is_identifier)
            && !matches!(kw(toks, j + 1), b"values" | b"select" | b"default")
    });
    found.then_some(SessionEffect::CreateTemp)
}

fn advisory_lock(toks: &[Token<'_>]) -> Option<SessionEffect> {
    toks.windows(2)
        .any(|w| {
            w[0].is_identifier()
                && w[1].is_punct(b'(')
                && w[0]
                    .value_bytes()
                    .is_some_and(|v| ADVISORY_LOCKS.iter().any(|f| name_eq(v, f.as_bytes())))
        })
        .then_some(SessionEffect::AdvisoryLock)
}
