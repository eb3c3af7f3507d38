//! Splits a query string into statements like the server and classifies each one.

use std::fmt;
use std::ops::Range;

use super::lexer::{Lexer, Token, TokenKind, MAX_IDENT_LEN};

/// The proxy's lexer depends on this setting, so clients may not change it.
const SCS_SETTING: &str = "standard_conforming_strings";
const CLIENT_ENCODING: &str = "client_encoding";

/// Client-only encodings (PostgreSQL's alias table, normalised like
/// `clean_encoding_name`: ASCII alphanumerics only, lowercase) whose multibyte
/// characters may contain `'` or `\` bytes, hiding quotes from a byte-level lexer.
const UNSAFE_ENCODINGS: &str = "sjis shiftjis mskanji win932 windows932 shiftjis2004 big5 win950 windows950 \
    gbk win936 windows936 cp936 uhc win949 windows949 gb18030 johab";

/// Built-in functions that run SQL handed to them as text, which the inspector never sees:
/// `query_to_xml` and `query_to_xml_and_xmlschema` execute their query, `ts_stat` its
/// tsvector query, `ts_rewrite(tsquery, text)` its rewrite-rule query. (`query_to_xmlschema`
/// only plans the query, so it is not listed.)
const SQL_TEXT_FUNCTIONS: &[&str] = &["query_to_xml", "query_to_xml_and_xmlschema", "ts_stat", "ts_rewrite"];

/// Session-level advisory lock functions (the `_xact_` variants end with the transaction).
const ADVISORY_LOCKS: &[&str] =
    &["pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared"];

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
    /// Runs an SQL-level prepared statement (`EXECUTE`, `EXPLAIN ... EXECUTE`,
    /// `CREATE TABLE ... AS EXECUTE`): behind a pooler the only such
    /// statements upstream are the proxy's own.
    pub executes: bool,
    /// Takes no snapshot and reads nothing a tenant policy or the tenant
    /// setting decides: transaction control, `SAVEPOINT`/`RELEASE`, `SET`/
    /// `RESET`, `LOCK`, `LISTEN`/`UNLISTEN`, `SHOW` of an unprotected setting
    /// (from PostgreSQL's own list of statements run without a snapshot).
    pub snapshot_free: bool,
    /// `ROLLBACK TO [SAVEPOINT] name`: undoes settings made after the savepoint,
    /// the tenant among them when it was set later.
    pub rollback_to: bool,
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
    /// `pg_settings` used outside a plain `SELECT`: its UPDATE rule calls `set_config()`.
    SettingsCatalog,
    /// A built-in that runs SQL given as text (`query_to_xml`, `ts_stat`, ...): that SQL could call `set_config()`.
    SqlText,
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
                "pg_settings may only be read with SELECT through pgtenant because updating it could change \
                 \"{s}\"; {why}"
            ),
            RefusalReason::SqlText => format!(
                "functions that run SQL given as text (query_to_xml, query_to_xml_and_xmlschema, ts_stat, \
                 ts_rewrite with a query) are not allowed through pgtenant because that SQL could change \"{s}\"; {why}"
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
        // The signed-mode proof (and its carried copies) belong to the proxy as much as the tenant does.
        use crate::auth::signing::{CARRY_PROOF_SETTING, CARRY_TENANT_SETTING, PROOF_SETTING};
        let mut protected = vec![tenant.clone(), SCS_SETTING.to_string()];
        protected.extend([PROOF_SETTING, CARRY_TENANT_SETTING, CARRY_PROOF_SETTING].map(String::from));
        // The server truncates each identifier of `SET a.b` to 63 bytes, so a configured
        // name with a longer part is reachable through its truncated spelling too.
        let truncated = truncate_parts(&tenant);
        if truncated != tenant {
            protected.push(truncated);
        }
        let max_parts = protected.iter().map(|p| p.split('.').count()).max().unwrap_or(1);
        Inspector { tenant_setting: tenant, protected, max_parts }
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
        let session = lead.session.or_else(|| select_into_temp(toks)).or_else(|| advisory_lock(toks));
        let executes = executes_prepared(toks);
        let snapshot_free = self.snapshot_free(toks);
        let refusal = self.refusal(toks);
        let rollback_to = kw(toks, 0) == b"rollback" && lead.tx == TxControl::None && kw(toks, 1) != b"prepared";
        let no_tx_block = lead.no_tx_block;
        Statement { span, tx: lead.tx, no_tx_block, refusal, session, executes, snapshot_free, rollback_to }
    }

    fn snapshot_free(&self, toks: &[Token<'_>]) -> bool {
        match kw(toks, 0) {
            b"begin" | b"start" | b"commit" | b"end" | b"abort" | b"rollback" | b"savepoint" | b"release" => {
                !matches!(kw(toks, 1), b"prepared")
            }
            b"set" | b"reset" | b"lock" | b"listen" | b"unlisten" => true,
            b"show" => match dotted_name(toks, 1, self.max_parts) {
                Some(name) if name.end == toks.len() => {
                    !name.matches(b"all") && !self.protected.iter().any(|p| name.matches(p.as_bytes()))
                }
                _ => false,
            },
            _ => false,
        }
    }

    /// Scans every token, not just the leading ones, so that `SET` clauses inside
    /// `ALTER ROLE`, `CREATE FUNCTION` and the like are caught by the same rule.
    fn refusal(&self, toks: &[Token<'_>]) -> Option<Refusal> {
        let (mut update, mut settings_view) = (false, false);
        let defines_routine_use = defines_aggregate_or_operator(toks);
        let mut arities = None;
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
                if let Some(name) = SQL_TEXT_FUNCTIONS.iter().find(|f| ident_is(tok, f)) {
                    // ts_rewrite(tsquery, tsquery, tsquery) runs no SQL; any other use of these
                    // names (a call, or a reference such as an aggregate's SFUNC) may.
                    let arities = arities.get_or_insert_with(|| call_arities(toks));
                    let pure_rewrite = *name == "ts_rewrite"
                        && toks.get(i + 1).is_some_and(|t| t.is_punct(b'('))
                        && arities[i + 1] == 3;
                    if !pure_rewrite {
                        return Some(refuse(&self.tenant_setting, RefusalReason::SqlText));
                    }
                }
                settings_view |= ident_is(tok, "pg_settings");
            }
            // `CREATE AGGREGATE ... (SFUNC = 'set_config', ...)`: a definition list may name
            // the function as a string, which the identifier checks above never see.
            if defines_routine_use && tok.is_string() && i > 0 && toks[i - 1].value_bytes() == Some(b"=") {
                if let Some(refusal) = self.check_routine_name_literal(tok) {
                    return Some(refusal);
                }
            }
        }
        // pg_settings has an UPDATE rule calling set_config(); a view over it (even a
        // TEMP one) inherits that path, so only plain SELECTs may mention it.
        let read_only = toks.first().is_some_and(|t| t.is_keyword("select")) && !update;
        (settings_view && !read_only).then(|| refuse(&self.tenant_setting, RefusalReason::SettingsCatalog))
    }

    /// `SET`/`RESET` at `i`: the name may follow directly or after `SESSION`/`LOCAL`.
    /// Both readings are tried because a protected name may itself start with one of them.
    fn check_set(&self, toks: &[Token<'_>], i: usize) -> Option<Refusal> {
        let is_set = toks[i].is_keyword("set");
        for j in i + 1..i + 4 {
            if let Some(refusal) = self.check_set_target(toks, j, is_set) {
                return Some(refusal);
            }
            if !matches!(kw(toks, j), b"session" | b"local") {
                break;
            }
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
        let assigns = toks.get(name.end).is_some_and(|t| t.is_keyword("to") || t.value_bytes() == Some(b"="));
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
        if let Some(p) = self.protected.iter().find(|p| name.eq_ignore_ascii_case(p.as_bytes())) {
            return Some(refuse(p, RefusalReason::SetConfig));
        }
        if name.eq_ignore_ascii_case(CLIENT_ENCODING.as_bytes()) {
            let safe = plain_literal_arg(toks, i + 4).is_some_and(|v| !is_unsafe_encoding(v));
            if !safe {
                return Some(refuse(CLIENT_ENCODING, RefusalReason::UnsafeClientEncoding));
            }
        }
        None
    }

    /// A string literal naming a function for an aggregate or operator to call.
    fn check_routine_name_literal(&self, tok: &Token<'_>) -> Option<Refusal> {
        let value = tok.value_bytes()?;
        let reason = if value.eq_ignore_ascii_case(b"set_config") {
            RefusalReason::DynamicSetConfig
        } else if SQL_TEXT_FUNCTIONS.iter().any(|f| value.eq_ignore_ascii_case(f.as_bytes())) {
            RefusalReason::SqlText
        } else {
            return None;
        };
        Some(refuse(&self.tenant_setting, reason))
    }
}

/// `CREATE [OR REPLACE] AGGREGATE` or `CREATE OPERATOR`: definition lists whose
/// `name = value` entries may name the function the object will call, as a string.
fn defines_aggregate_or_operator(toks: &[Token<'_>]) -> bool {
    let i = if kw(toks, 1) == b"or" && kw(toks, 2) == b"replace" { 3 } else { 1 };
    kw(toks, 0) == b"create" && matches!(kw(toks, i), b"aggregate" | b"operator")
}

/// For every `(` of a statement, the number of top-level arguments up to its matching `)`
/// (`usize::MAX` if it never closes); 0 for other tokens. One pass with a stack, so that
/// nested calls cost linear time.
fn call_arities(toks: &[Token<'_>]) -> Vec<usize> {
    let mut arities = vec![0; toks.len()];
    // (index of the opening bracket, commas seen at its level, whether anything follows it)
    let mut open: Vec<(usize, usize, bool)> = Vec::new();
    for (i, tok) in toks.iter().enumerate() {
        match tok.kind {
            TokenKind::Punct(b'(' | b'[') => {
                if let Some(top) = open.last_mut() {
                    top.2 = true;
                }
                arities[i] = usize::MAX;
                open.push((i, 0, false));
            }
            TokenKind::Punct(b')' | b']') => {
                if let Some((at, commas, nonempty)) = open.pop() {
                    arities[at] = if nonempty { commas + 1 } else { 0 };
                }
            }
            TokenKind::Punct(b',') => {
                if let Some(top) = open.last_mut() {
                    top.1 += 1;
                    top.2 = true;
                }
            }
            _ => {
                if let Some(top) = open.last_mut() {
                    top.2 = true;
                }
            }
        }
    }
    arities
}

fn refuse(setting: &str, reason: RefusalReason) -> Refusal {
    Refusal { setting: setting.to_string(), reason }
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
    let mut name = Name { parts: vec![first.value_bytes()], end: start + 1, overflow: false };
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
    /// Whether the server could resolve this name to `target`. Parts may contain dots
    /// themselves and match a variable number of bytes (see [`ident_ends`]), so this
    /// walks `target` tracking every reachable offset.
    fn matches(&self, target: &[u8]) -> bool {
        if self.overflow {
            return false;
        }
        let mut reach = vec![false; target.len() + 1];
        reach[0] = true;
        for (k, part) in self.parts.iter().enumerate() {
            let mut next = vec![false; target.len() + 1];
            for pos in (0..=target.len()).filter(|&p| reach[p]) {
                let at = match (k, target.get(pos)) {
                    (0, _) => pos,
                    (_, Some(b'.')) => pos + 1,
                    _ => continue,
                };
                match part {
                    Some(v) => ident_ends(v, target, at, &mut next),
                    // Undecodable: the server rejects it anyway, so assume the worst.
                    None => next[at + 1..].iter_mut().for_each(|e| *e = true),
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
        let parts: Vec<String> =
            self.parts.iter().map(|p| String::from_utf8_lossy(p.unwrap_or(b"?")).into_owned()).collect();
        parts.join(".")
    }
}

/// Marks in `ends` every offset of `target` where the identifier `ident`, read from
/// offset `at`, may end once the server has processed it:
/// - ASCII letters compare case-insensitively;
/// - a run of n non-ASCII bytes stands for 1..=n ASCII letters, because a single-byte
///   server encoding lowercases with the locale's `tolower()` (Turkish `İ` -> `i`),
///   after converting from a client encoding where a character may take several bytes;
/// - the identifier may stop anywhere after `MAX_IDENT_LEN - 3` target bytes, since
///   the server truncates it to 63 bytes, backing off to a character boundary.
fn ident_ends(ident: &[u8], target: &[u8], at: usize, ends: &mut [bool]) {
    if ident.is_ascii() {
        ascii_ident_ends(ident, target, at, ends);
    } else {
        any_ident_ends(ident, target, at, ends);
    }
}

/// [`ident_ends`] for an all-ASCII identifier (nearly every one): a single
/// offset is reachable at each step, so no allocation is needed.
fn ascii_ident_ends(ident: &[u8], target: &[u8], at: usize, ends: &mut [bool]) {
    for (i, c) in ident.iter().enumerate() {
        let p = at + i;
        if p >= at + MAX_IDENT_LEN - 3 {
            ends[p] = true;
        }
        if !target.get(p).is_some_and(|t| c.eq_ignore_ascii_case(t)) {
            return;
        }
    }
    ends[at + ident.len()] = true;
}

/// [`ident_ends`] in general, tracking every reachable offset.
fn any_ident_ends(ident: &[u8], target: &[u8], at: usize, ends: &mut [bool]) {
    let mut reach = vec![false; target.len() + 1];
    reach[at] = true;
    let mut i = 0;
    while i < ident.len() && reach.contains(&true) {
        for p in (at + MAX_IDENT_LEN - 3..=target.len()).filter(|&p| reach[p]) {
            ends[p] = true;
        }
        let run = if ident[i] < 0x80 { 1 } else { ident[i..].iter().take_while(|&&c| c >= 0x80).count() };
        let mut next = vec![false; target.len() + 1];
        for p in (at..target.len()).filter(|&p| reach[p]) {
            if ident[i] < 0x80 {
                next[p + 1] = ident[i].eq_ignore_ascii_case(&target[p]);
                continue;
            }
            for k in (1..=run).take_while(|&k| target.get(p + k - 1).is_some_and(u8::is_ascii_alphabetic)) {
                next[p + k] = true;
            }
        }
        reach = next;
        i += run;
    }
    for (end, reached) in ends.iter_mut().zip(reach) {
        *end |= reached;
    }
}

/// An identifier token that is (or, being undecodable, might be) `name`.
fn ident_is(tok: &Token<'_>, name: &str) -> bool {
    let target = name.as_bytes();
    tok.value_bytes().is_none_or(|v| {
        // An ASCII identifier too short to be truncated matches only its own length.
        if v.is_ascii() && v.len() < MAX_IDENT_LEN - 3 && v.len() != target.len() {
            return false;
        }
        // Targets are short keywords; the common case needs no heap.
        let mut small = [false; 64];
        let mut large = Vec::new();
        let ends = match target.len() < small.len() {
            true => &mut small[..=target.len()],
            false => {
                large.resize(target.len() + 1, false);
                &mut large[..]
            }
        };
        ident_ends(v, target, 0, ends);
        ends[target.len()]
    })
}

/// A function argument at `i` that is a plain string literal followed by `,`.
fn plain_literal_arg<'t>(toks: &'t [Token<'_>], i: usize) -> Option<&'t [u8]> {
    let tok = toks.get(i)?;
    let plain = matches!(tok.kind, TokenKind::String | TokenKind::EscapeString | TokenKind::DollarString);
    let comma = toks.get(i + 1).is_some_and(|t| t.is_punct(b','));
    if plain && comma {
        tok.value_bytes()
    } else {
        None
    }
}

/// Non-ASCII values are refused outright: encoding names are ASCII, and a single-byte
/// server may lowercase a non-ASCII identifier into one (`SJİS` -> `sjis`).
/// Whether a client_encoding value may hide quote bytes from a byte-level lexer.
pub fn is_unsafe_encoding(value: &[u8]) -> bool {
    if !value.is_ascii() {
        return true;
    }
    let clean: Vec<u8> = value.iter().filter(|c| c.is_ascii_alphanumeric()).map(u8::to_ascii_lowercase).collect();
    UNSAFE_ENCODINGS.split_ascii_whitespace().any(|e| e.as_bytes() == clean)
}

/// Checks a `SET` value list (`v [, v ...]`) starting at `k`: true if any value is an
/// unsafe encoding or not a constant. `FROM CURRENT` keeps the current, vetted value.
fn unsafe_encoding_values(toks: &[Token<'_>], mut k: usize) -> bool {
    if kw(toks, k) == b"from" && kw(toks, k + 1) == b"current" {
        return false;
    }
    while let Some(tok) = toks.get(k) {
        let constant = tok.is_identifier() || tok.is_string() || tok.kind == TokenKind::Number;
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
/// `EXECUTE name`, `EXPLAIN [...] EXECUTE name`, `... AS EXECUTE name`.
fn executes_prepared(toks: &[Token<'_>]) -> bool {
    let Some(first) = toks.first() else { return false };
    if first.is_keyword("execute") {
        return true;
    }
    if first.is_keyword("explain") && toks.iter().any(|t| t.is_keyword("execute")) {
        return true;
    }
    toks.windows(2).any(|w| w[0].is_keyword("as") && w[1].is_keyword("execute"))
}

#[derive(Debug, Default)]
struct Lead {
    tx: TxControl,
    no_tx_block: bool,
    session: Option<SessionEffect>,
}

impl Lead {
    fn tx(tx: TxControl) -> Self {
        Lead { tx, ..Lead::default() }
    }

    fn no_tx(no_tx_block: bool) -> Self {
        Lead { no_tx_block, ..Lead::default() }
    }

    fn session(session: Option<SessionEffect>) -> Self {
        Lead { session, ..Lead::default() }
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
    let chained = toks.windows(2).any(|w| w[0].is_keyword("and") && w[1].is_keyword("chain"));
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
    Lead { no_tx_block, session: temp.then_some(SessionEffect::CreateTemp), ..Lead::default() }
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
        b"database" => toks.windows(2).any(|w| w[0].is_keyword("set") && w[1].is_keyword("tablespace")),
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
    matches!(kw(toks, i), b"schema" | b"database" | b"system") || toks.iter().any(|t| t.is_keyword("concurrently"))
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
    Lead { no_tx_block: kind == DiscardKind::All, session: Some(SessionEffect::Discard(kind)), ..Lead::default() }
}

fn set_effect(toks: &[Token<'_>]) -> Option<SessionEffect> {
    let (i, local) = match kw(toks, 1) {
        b"session" => (2, false),
        b"local" => (2, true),
        _ => (1, false),
    };
    let set = |name: &str, local: bool| Some(SessionEffect::Set { name: name.to_string(), local });
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
        (b"schema", _) if toks.get(i + 1).is_some_and(Token::is_string) => set("search_path", local),
        _ => dotted_name(toks, i, usize::MAX).map(|n| SessionEffect::Set { name: n.text(), local }),
    }
}

fn reset_effect(toks: &[Token<'_>]) -> Option<SessionEffect> {
    let reset = |name: &str| Some(SessionEffect::Reset { name: name.to_string() });
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
        Some(t) if t.is_identifier() => Some(SessionEffect::Deallocate { name: Some(lossy_value(t)) }),
        _ => None,
    }
}

/// `WITH HOLD` counts only before `FOR`; the query itself may contain `WITH hold AS (...)`.
fn declare(toks: &[Token<'_>]) -> Option<SessionEffect> {
    let head = toks.iter().position(|t| t.is_keyword("for")).unwrap_or(toks.len());
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
                    .is_some_and(|v| ADVISORY_LOCKS.iter().any(|f| v.eq_ignore_ascii_case(f.as_bytes())))
        })
        .then_some(SessionEffect::AdvisoryLock)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ascii_fast_path_agrees_with_the_general_matcher() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"aAbB_.cfgnoist";
        let targets: [&[u8]; 4] = [b"set_config", b"app.current_tenant_id", b"a", &[b'x'; super::MAX_IDENT_LEN + 10]];
        for _ in 0..20_000 {
            let target = targets[(next() % 4) as usize];
            let len = (next() % 80) as usize;
            let ident: Vec<u8> = (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();
            let ident = if next() % 3 == 0 { target[..len.min(target.len())].to_vec() } else { ident };
            let at = (next() % (target.len() as u64 + 1)) as usize;
            let (mut fast, mut slow) = (vec![false; target.len() + 1], vec![false; target.len() + 1]);
            super::ascii_ident_ends(&ident, target, at, &mut fast);
            super::any_ident_ends(&ident, target, at, &mut slow);
            assert_eq!(
                fast,
                slow,
                "{:?} in {:?} at {at}",
                String::from_utf8_lossy(&ident),
                String::from_utf8_lossy(target)
            );
        }
    }

    use super::*;

    const TENANT: &str = "app.current_tenant_id";

    fn inspector() -> Inspector {
        Inspector::new("App.Current_Tenant_Id")
    }

    fn inspect(sql: &str) -> Inspection {
        inspector().inspect(sql.as_bytes(), true)
    }

    fn only(sql: &str) -> Statement {
        let mut inspection = inspect(sql);
        assert!(!inspection.lex_error, "lex error in {sql:?}");
        assert_eq!(inspection.statements.len(), 1, "{sql:?}: {:?}", inspection.statements);
        inspection.statements.remove(0)
    }

    fn refusal(sql: &str) -> Option<Refusal> {
        inspect(sql).refusal().cloned()
    }

    fn assert_refused(sql: &str, setting: &str, reason: RefusalReason) {
        let r = refusal(sql).unwrap_or_else(|| panic!("not refused: {sql:?}"));
        assert_eq!((r.setting.as_str(), r.reason), (setting, reason), "{sql:?}");
    }

    fn texts(sql: &str) -> Vec<&str> {
        inspect(sql).statements.iter().map(|s| &sql[s.span.clone()]).collect()
    }

    #[test]
    fn refuses_every_spelling_of_set_on_the_tenant_setting() {
        for sql in [
            "SET app.current_tenant_id = 'x'",
            "set APP.CURRENT_TENANT_ID to 'x'",
            "SET \"app\".\"current_tenant_id\" = 'x'",
            "SET \"app.current_tenant_id\" = 'x'",
            "SET U&\"\\0061pp\".current_tenant_id = 'x'",
            "SET U&\"!0061pp\" UESCAPE '!' . current_tenant_id = 'x'",
            "SET app /*c*/ . /* d /* nested */ */ current_tenant_id = 'x'",
            "SET app -- c\n . current_tenant_id = 'x'",
            "SET SESSION app.current_tenant_id = 'x'",
            "SET LOCAL app.current_tenant_id = 'x'",
            "SET app.current_tenant_id TO DEFAULT",
            "SET app.current_tenant_id FROM CURRENT",
            "RESET app.current_tenant_id",
            "reset \"app\".current_tenant_id",
            "ALTER ROLE bob SET app.current_tenant_id = 'x'",
            "ALTER USER bob SET app.current_tenant_id = 'x'",
            "ALTER DATABASE d SET app.current_tenant_id = 'x'",
            "ALTER ROLE bob IN DATABASE d RESET app.current_tenant_id",
            "ALTER ROLE ALL SET app.current_tenant_id TO 'x'",
            "ALTER SYSTEM SET app.current_tenant_id = 'x'",
            "ALTER FUNCTION f() SET app.current_tenant_id = 'x'",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET app.current_tenant_id = 'x' AS $$select 1$$",
            "CREATE PROCEDURE p() LANGUAGE sql SET app.current_tenant_id FROM CURRENT AS 'select 1'",
            "select 1; SET app.current_tenant_id = 'x'",
        ] {
            assert_refused(sql, TENANT, RefusalReason::SetCommand);
        }
    }

    #[test]
    fn refuses_changes_to_standard_conforming_strings() {
        for sql in [
            "SET standard_conforming_strings = off",
            "SET SESSION Standard_Conforming_Strings TO off",
            "RESET standard_conforming_strings",
            "ALTER ROLE r SET \"standard_conforming_strings\" = off",
            "select set_config('standard_conforming_strings', 'off', false)",
        ] {
            assert_eq!(refusal(sql).unwrap().setting, SCS_SETTING, "{sql}");
        }
    }

    #[test]
    fn refuses_set_config_on_protected_or_unknown_names() {
        for sql in [
            "select set_config('app.current_tenant_id', '2', false)",
            "select SET_CONFIG('APP.CURRENT_TENANT_ID', '2', false)",
            "select pg_catalog.set_config('app.current_tenant_id', '2', true)",
            "select \"pg_catalog\".\"set_config\"('app.current_tenant_id', '2', true)",
            "select U&\"set\\005fconfig\"('app.current_tenant_id', '2', true)",
            "select set_config /* x */ ( /* y */ 'app.current_tenant_id' -- z\n, '2', true)",
            "select set_config(E'app.current\\x5ftenant_id', '2', false)",
            "select set_config($q$app.current_tenant_id$q$, '2', false)",
            "select set_config('app.'\n'current_tenant_id', '2', false)",
        ] {
            assert_refused(sql, TENANT, RefusalReason::SetConfig);
        }
        for sql in [
            "select set_config($1, $2, false)",
            "select set_config('app.' || 'current_tenant_id', '2', false)",
            "select set_config(lower('APP.CURRENT_TENANT_ID'), '2', false)",
            "select set_config('search_path'::text, 'x', false)",
            "select set_config(name, '2', false) from t",
            "select set_config(U&'app.current_tenant_id', '2', false)",
            "select set_config(setting_name => 'search_path', new_value => 'x', is_local => false)",
            "select set_config",
            "select set_config('search_path')",
            "select x.set_config from x",
            "select set_config(N'search_path', 'x', false)",
        ] {
            assert_refused(sql, TENANT, RefusalReason::DynamicSetConfig);
        }
    }

    #[test]
    fn refuses_builtins_that_run_sql_text() {
        // Found by tests/inspector_oracle.rs: each of these changed the tenant setting in
        // PostgreSQL 15 through SQL the inspector never sees.
        for sql in [
            "SELECT query_to_xml('SELECT set_config(''app.current_tenant_id'', ''2'', false)', false, false, '')",
            "select pg_catalog.QUERY_TO_XML_AND_XMLSCHEMA($1, false, false, '') is not null",
            "SELECT * FROM ts_stat('SELECT v FROM t')",
            "SELECT * FROM \"ts_stat\"('SELECT v FROM t', 'ab')",
            "SELECT ts_rewrite('a'::tsquery, 'SELECT t, s FROM aliases')",
            "SELECT ts_rewrite(q, 'SELECT t, s FROM aliases') FROM queries",
            "SELECT ts_rewrite('a'::tsquery, f(1, 2))",
            "SELECT ts_rewrite('a'::tsquery, 'b'::tsquery",
            "CREATE AGGREGATE a(text) (SFUNC = ts_rewrite, STYPE = tsquery)",
            "CREATE OPERATOR ### (LEFTARG = tsquery, RIGHTARG = text, FUNCTION = 'ts_rewrite')",
            "CREATE AGGREGATE a(text) (SFUNC = $$TS_REWRITE$$, STYPE = tsquery)",
        ] {
            assert_refused(sql, TENANT, RefusalReason::SqlText);
        }
        for sql in [
            "SELECT ts_rewrite('a & b'::tsquery, 'a'::tsquery, 'c'::tsquery)",
            "SELECT ts_rewrite(q, t.target, coalesce(t.sub, f(1, ARRAY[2, 3]))) FROM t",
            "SELECT ts_rewrite(ts_rewrite(q, a, b), c, d) FROM t",
            "SELECT query_to_xmlschema('SELECT 1', false, false, '')",
            "SELECT 'query_to_xml(''x'')', $$ts_stat('x')$$",
            "SELECT * FROM pg_proc WHERE proname = 'ts_stat'",
        ] {
            assert_eq!(refusal(sql), None, "{sql}");
        }
        let deep = "select ".to_string() + &"ts_rewrite(".repeat(20_000) + "q" + &", a, b)".repeat(20_000);
        assert_eq!(inspector().inspect(deep.as_bytes(), true).refusal(), None);
    }

    #[test]
    fn refuses_aggregates_and_operators_naming_set_config_as_a_string() {
        // Found by tests/inspector_oracle.rs: `SFUNC = 'set_config'` resolves like the
        // identifier, and `SELECT pg_temp.a('<tenant>', false)` then calls
        // set_config('app.current_tenant_id', '<tenant>', false).
        for sql in [
            "CREATE AGGREGATE pg_temp.a(text, boolean) (SFUNC = 'set_config', STYPE = text, INITCOND = 'x')",
            "create or replace aggregate a(text, bool) (sfunc = $$set_config$$, stype = text)",
            "CREATE AGGREGATE a (BASETYPE = text, SFUNC = E'set\\x5fconfig', STYPE = text)",
            "CREATE AGGREGATE a(text, bool) (SFUNC = f, STYPE = text, FINALFUNC = 'SET_CONFIG', FINALFUNC_EXTRA)",
        ] {
            assert_refused(sql, TENANT, RefusalReason::DynamicSetConfig);
        }
        for sql in [
            "CREATE AGGREGATE a(int) (SFUNC = 'int4pl', STYPE = int)",
            "SELECT * FROM pg_proc WHERE proname = 'set_config'",
            "CREATE TABLE x AS SELECT 'set_config' AS f",
        ] {
            assert_eq!(refusal(sql), None, "{sql}");
        }
    }

    #[test]
    fn refuses_unsafe_client_encodings() {
        for sql in [
            "SET client_encoding = 'SJIS'",
            "SET client_encoding TO sjis",
            "set CLIENT_ENCODING to \"Shift_JIS\"",
            "SET client_encoding = 'big5'",
            "SET client_encoding = 'GBK'",
            "SET client_encoding = 'UHC'",
            "SET client_encoding = 'GB18030'",
            "SET client_encoding = 'johab'",
            "SET client_encoding = 'win-932'",
            "SET client_encoding = E'sjis'",
            "SET client_encoding = $1",
            "SET LOCAL client_encoding = 'utf8', 'sjis'",
            "SET NAMES 'sjis'",
            "SET LOCAL NAMES 'BIG5'",
            "ALTER ROLE r SET client_encoding = 'sjis'",
            "select set_config('client_encoding', 'SJIS', false)",
            "select set_config('client_encoding', $1, false)",
            "select set_config('client_encoding', 'SJ' || 'IS', false)",
            "SET client_encoding = SJ\u{130}S",
            "select set_config('client_encoding', 'sj\u{130}s', false)",
        ] {
            assert_refused(sql, CLIENT_ENCODING, RefusalReason::UnsafeClientEncoding);
        }
        for sql in [
            "SET client_encoding = 'UTF8'",
            "SET client_encoding TO DEFAULT",
            "SET client_encoding FROM CURRENT",
            "SET NAMES 'LATIN1'",
            "SET NAMES DEFAULT",
            "SET NAMES",
            "UPDATE people SET names = $1",
            "select set_config('client_encoding', 'utf8', false)",
        ] {
            assert_eq!(refusal(sql), None, "{sql}");
        }
    }

    #[test]
    fn refuses_updates_of_pg_settings() {
        for sql in [
            "UPDATE pg_settings SET setting = '2' WHERE name = 'app.current_tenant_id'",
            "update pg_catalog.pg_settings set setting = '2'",
            "WITH x AS (UPDATE \"pg_settings\" SET setting = '2' RETURNING 1) SELECT 1",
            "CREATE TEMP VIEW v AS SELECT * FROM pg_settings",
            "CREATE RULE r AS ON UPDATE TO v DO INSTEAD UPDATE pg_catalog.pg_settings SET setting = new.setting",
            "SELECT * FROM pg_settings FOR UPDATE",
        ] {
            assert_refused(sql, TENANT, RefusalReason::SettingsCatalog);
        }
        assert_eq!(refusal("SELECT name, setting FROM pg_settings WHERE name = 'work_mem'"), None);
        assert_eq!(refusal("select current_setting('app.current_tenant_id'), * from pg_catalog.pg_settings"), None);
    }

    #[test]
    fn allows_harmless_statements() {
        for sql in [
            "SET search_path = a, b",
            "SET app.other = 'x'",
            "SET app.current_tenant_id_2 = 'x'",
            "SET app.current_tenant = 'x'",
            "SET x.app.current_tenant_id = 'x'",
            "SET \"app. current_tenant_id\" = 'x'",
            "RESET ALL",
            "DISCARD ALL",
            "SELECT 'set app.current_tenant_id = 1'",
            "SELECT E'set app.current_tenant_id = 1\\''",
            "SELECT 1 -- set app.current_tenant_id = 1",
            "SELECT /* set app.current_tenant_id = 1 */ 1",
            "SELECT $x$ set_config('app.current_tenant_id','b',false) $x$",
            "select current_setting('app.current_tenant_id')",
            "SHOW app.current_tenant_id",
            "select set_config('search_path', 'x', false)",
            "select set_config(E'search_path', $$x$$, false)",
            "UPDATE t SET a = 1, b = 2",
            "UPDATE t SET (a, b) = (1, 2)",
            "SELECT \"set\" FROM t",
        ] {
            assert_eq!(refusal(sql), None, "{sql}");
        }
    }

    #[test]
    fn protected_names_beginning_with_session_or_local_are_still_found() {
        let insp = Inspector::new("local.tenant");
        for sql in ["SET local.tenant = 1", "SET LOCAL local.tenant = 1", "SET session local.tenant = 1"] {
            let r = insp.inspect(sql.as_bytes(), true).refusal().cloned();
            assert_eq!(r.map(|r| r.setting), Some("local.tenant".to_string()), "{sql}");
        }
    }

    #[test]
    fn identifier_truncation_and_locale_lowercasing_are_accounted_for() {
        let long = "t".repeat(63);
        let insp = Inspector::new(&format!("app.{long}"));
        let sql = format!("SET app.{long}xyz = 1");
        assert!(insp.inspect(sql.as_bytes(), true).refusal().is_some());
        let longer = Inspector::new(&format!("app.{long}zz"));
        assert!(longer.inspect(sql.as_bytes(), true).refusal().is_some());
        // A single-byte-encoding server may lowercase a non-ASCII character into an ASCII
        // letter (Turkish dotted I), whether the client sent it as one byte or several.
        assert!(inspector().inspect(b"SET app.current_tenant_\xddd = 1", true).refusal().is_some());
        assert!(refusal("SET app.current_tenant_\u{130}d = 1").is_some());
        assert!(refusal("SELECT SET_CONF\u{130}G($1, 'x', false)").is_some());
        assert!(refusal("UPDATE pg_sett\u{130}ngs SET setting = 1").is_some());
        // ...but ordinary non-ASCII names are not mistaken for anything.
        assert!(refusal("SET caf\u{e9}.x = 1").is_none());
        assert!(refusal("SELECT caf\u{e9}, \u{8868}\u{540d} FROM t").is_none());
        assert!(refusal("SET app.current_tenant_\u{e9}x = 1").is_none());
        // Undecodable U& identifiers are rejected by the server anyway; treat as a match.
        assert!(refusal("SET U&\"\\zzzz\".x = 1").is_some());
    }

    #[test]
    fn refusal_messages_name_the_setting() {
        let r = refusal("SET app.current_tenant_id = 1").unwrap();
        assert_eq!(
            r.message(),
            "changing \"app.current_tenant_id\" is not allowed through pgtenant; the tenant comes from your token"
        );
        assert_eq!(r.to_string(), r.message());
        for sql in [
            "select set_config($1, 'x', false)",
            "SET client_encoding = 'sjis'",
            "update pg_settings set setting = 1",
            "SET standard_conforming_strings = off",
        ] {
            let r = refusal(sql).unwrap();
            assert!(r.message().contains(&format!("\"{}\"", r.setting)), "{}", r.message());
        }
        assert_eq!(inspector().tenant_setting(), TENANT);
    }

    #[test]
    fn splits_on_top_level_semicolons_with_exact_spans() {
        let sql = "  SELECT 1 ; ;; /* c */ ;\n select 'a;b' , \"x;y\" -- ;\n ; SELECT $$;$$ /* ; */";
        assert_eq!(texts(sql), ["SELECT 1", "select 'a;b' , \"x;y\"", "SELECT $$;$$"]);
        assert!(inspect("").statements.is_empty());
        assert!(inspect(" ; -- x\n ; /* y */").statements.is_empty());
        assert_eq!(texts("begin;"), ["begin"]);
    }

    #[test]
    fn semicolons_in_parentheses_do_not_split() {
        let sql =
            "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2)); SELECT 1";
        assert_eq!(
            texts(sql),
            [
                "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2))",
                "SELECT 1"
            ]
        );
        // Unbalanced closing parentheses never go negative.
        assert_eq!(texts("select ) ; select 2"), ["select )", "select 2"]);
    }

    #[test]
    fn sql_standard_routine_bodies_do_not_split() {
        let body =
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 2 END; END";
        assert_eq!(texts(&format!("{body}; COMMIT")), [body, "COMMIT"]);
        let proc = "create or replace procedure p() begin atomic insert into t values (1); select 1 as end; end";
        assert_eq!(texts(&format!("{proc};select 2")), [proc, "select 2"]);
        // A routine merely named `begin` has no body to protect.
        let named = "CREATE FUNCTION begin() RETURNS int LANGUAGE sql AS 'select 1'";
        let stmts = inspect(&format!("{named}; COMMIT")).statements;
        assert_eq!(stmts.len(), 2);
        assert_eq!(stmts[1].tx, TxControl::End);
        // BEGIN ATOMIC outside a routine definition is not special.
        assert_eq!(texts("select begin atomic; select 2").len(), 2);
        // The BEGIN inside the body is not a transaction start.
        assert_eq!(only(body).tx, TxControl::None);
    }

    #[test]
    fn classifies_transaction_control() {
        for (sql, tx) in [
            ("BEGIN", TxControl::Begin),
            ("begin", TxControl::Begin),
            ("BEGIN ISOLATION LEVEL SERIALIZABLE", TxControl::Begin),
            ("BEGIN WORK READ ONLY", TxControl::Begin),
            ("START TRANSACTION", TxControl::Begin),
            ("start transaction isolation level repeatable read", TxControl::Begin),
            ("COMMIT", TxControl::End),
            ("COMMIT WORK", TxControl::End),
            ("END", TxControl::End),
            ("END TRANSACTION", TxControl::End),
            ("ABORT", TxControl::End),
            ("ROLLBACK", TxControl::End),
            ("COMMIT AND CHAIN", TxControl::EndAndChain),
            ("ROLLBACK TRANSACTION AND CHAIN", TxControl::EndAndChain),
            ("abort and chain", TxControl::EndAndChain),
            ("COMMIT AND NO CHAIN", TxControl::End),
            ("ROLLBACK TO SAVEPOINT a", TxControl::None),
            ("ROLLBACK WORK TO a", TxControl::None),
            ("SAVEPOINT a", TxControl::None),
            ("RELEASE SAVEPOINT a", TxControl::None),
            ("PREPARE TRANSACTION 'x'", TxControl::End),
            ("COMMIT PREPARED 'x'", TxControl::None),
            ("ROLLBACK PREPARED 'x'", TxControl::None),
            ("SELECT 1", TxControl::None),
            ("/* c */ BEGIN", TxControl::Begin),
        ] {
            assert_eq!(only(sql).tx, tx, "{sql}");
        }
        let tx: Vec<TxControl> = inspect("BEGIN; SELECT 1; COMMIT").statements.iter().map(|s| s.tx).collect();
        assert_eq!(tx, [TxControl::Begin, TxControl::None, TxControl::End]);
    }

    #[test]
    fn flags_statements_that_cannot_run_in_a_transaction_block() {
        for sql in [
            "VACUUM",
            "vacuum (analyze) t",
            "CREATE DATABASE d",
            "DROP DATABASE d",
            "ALTER DATABASE d SET TABLESPACE ts",
            "CREATE TABLESPACE ts LOCATION '/x'",
            "DROP TABLESPACE ts",
            "CREATE INDEX CONCURRENTLY i ON t (a)",
            "CREATE UNIQUE INDEX CONCURRENTLY i ON t (a)",
            "DROP INDEX CONCURRENTLY i",
            "REINDEX INDEX CONCURRENTLY i",
            "REINDEX (VERBOSE) TABLE CONCURRENTLY t",
            "REINDEX DATABASE d",
            "REINDEX SYSTEM d",
            "REINDEX (VERBOSE) SCHEMA s",
            "ALTER SYSTEM SET work_mem = '1MB'",
            "CLUSTER",
            "CLUSTER VERBOSE",
            "CLUSTER (VERBOSE)",
            "COMMIT PREPARED 'x'",
            "ROLLBACK PREPARED 'x'",
            "DISCARD ALL",
            "CREATE SUBSCRIPTION s CONNECTION 'c' PUBLICATION p",
            "ALTER SUBSCRIPTION s REFRESH PUBLICATION",
            "DROP SUBSCRIPTION s",
            "ALTER TABLE p DETACH PARTITION c CONCURRENTLY",
        ] {
            assert!(only(sql).no_tx_block, "{sql}");
        }
        for sql in [
            "CREATE INDEX i ON t (a)",
            "DROP INDEX i",
            "REINDEX TABLE t",
            "ALTER DATABASE d SET work_mem = '1MB'",
            "CLUSTER t",
            "CLUSTER VERBOSE t USING i",
            "CLUSTER (VERBOSE) t",
            "DISCARD PLANS",
            "SELECT 'VACUUM'",
            "ANALYZE t",
        ] {
            assert!(!only(sql).no_tx_block, "{sql}");
        }
    }

    fn set(name: &str, local: bool) -> Option<SessionEffect> {
        Some(SessionEffect::Set { name: name.to_string(), local })
    }

    #[test]
    fn classifies_session_effects() {
        use SessionEffect as E;
        let reset = |name: &str| Some(E::Reset { name: name.to_string() });
        for (sql, effect) in [
            ("SET search_path = a", set("search_path", false)),
            ("SET SESSION Work_Mem TO '1MB'", set("work_mem", false)),
            ("SET LOCAL statement_timeout = 5", set("statement_timeout", true)),
            ("SET \"MyExt\".opt = 1", set("MyExt.opt", false)),
            ("SET TIME ZONE 'UTC'", set("timezone", false)),
            ("SET NAMES 'UTF8'", set("client_encoding", false)),
            ("SET SCHEMA 'a'", set("search_path", false)),
            ("SET ROLE bob", set("role", false)),
            ("SET SESSION AUTHORIZATION bob", set("session_authorization", false)),
            ("SET TRANSACTION READ ONLY", set("transaction", true)),
            ("SET CONSTRAINTS ALL DEFERRED", set("constraints", true)),
            ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", set("session_characteristics", false)),
            ("RESET work_mem", reset("work_mem")),
            ("RESET TIME ZONE", reset("timezone")),
            ("RESET SESSION AUTHORIZATION", reset("session_authorization")),
            ("RESET ALL", Some(E::ResetAll)),
            ("DISCARD ALL", Some(E::Discard(DiscardKind::All))),
            ("DISCARD PLANS", Some(E::Discard(DiscardKind::Plans))),
            ("DISCARD TEMP", Some(E::Discard(DiscardKind::Temp))),
            ("DISCARD TEMPORARY", Some(E::Discard(DiscardKind::Temp))),
            ("DISCARD SEQUENCES", Some(E::Discard(DiscardKind::Sequences))),
            ("LISTEN chan", Some(E::Listen)),
            ("UNLISTEN *", Some(E::Unlisten)),
            ("PREPARE Q1 (int) AS SELECT $1", Some(E::Prepare { name: "q1".into() })),
            ("PREPARE \"Q1\" AS SELECT 1", Some(E::Prepare { name: "Q1".into() })),
            ("DEALLOCATE q1", Some(E::Deallocate { name: Some("q1".into()) })),
            ("DEALLOCATE PREPARE q1", Some(E::Deallocate { name: Some("q1".into()) })),
            ("DEALLOCATE ALL", Some(E::Deallocate { name: None })),
            ("DEALLOCATE PREPARE ALL", Some(E::Deallocate { name: None })),
            ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", Some(E::DeclareWithHold)),
            ("DECLARE c NO SCROLL CURSOR WITHOUT HOLD FOR SELECT 1", None),
            ("DECLARE c CURSOR FOR WITH hold AS (SELECT 1) SELECT * FROM hold", None),
            ("CREATE TEMP TABLE t (a int)", Some(E::CreateTemp)),
            ("CREATE TEMPORARY VIEW v AS SELECT 1", Some(E::CreateTemp)),
            ("CREATE LOCAL TEMP SEQUENCE s", Some(E::CreateTemp)),
            ("CREATE GLOBAL TEMPORARY TABLE t (a int)", Some(E::CreateTemp)),
            ("CREATE OR REPLACE TEMP VIEW v AS SELECT 1", Some(E::CreateTemp)),
            ("CREATE TABLE t (a int)", None),
            ("SELECT 1 INTO TEMP t", Some(E::CreateTemp)),
            ("SELECT 1 INTO TEMPORARY TABLE t", Some(E::CreateTemp)),
            ("WITH x AS (SELECT 1) SELECT * INTO LOCAL TEMP t FROM x", Some(E::CreateTemp)),
            ("INSERT INTO temp VALUES (1)", None),
            ("SELECT pg_advisory_lock(1)", Some(E::AdvisoryLock)),
            ("SELECT pg_catalog.PG_TRY_ADVISORY_LOCK_SHARED(1, 2)", Some(E::AdvisoryLock)),
            ("SELECT pg_advisory_xact_lock(1)", None),
            ("SELECT 'pg_advisory_lock(1)'", None),
            ("SELECT 1", None),
        ] {
            assert_eq!(only(sql).session, effect, "{sql}");
        }
    }

    #[test]
    fn execute_of_prepared_statements_is_flagged() {
        for sql in
            ["EXECUTE p(1)", "execute pgtenant_tenant('x')", "EXPLAIN ANALYZE EXECUTE p", "CREATE TABLE t AS EXECUTE p"]
        {
            assert!(inspect(sql).statements[0].executes, "{sql}");
        }
        for sql in [
            "SELECT 1",
            "CREATE TRIGGER t AFTER INSERT ON x FOR EACH ROW EXECUTE FUNCTION f()",
            "GRANT EXECUTE ON FUNCTION f() TO app_user",
        ] {
            assert!(!inspect(sql).statements[0].executes, "{sql}");
        }
    }

    #[test]
    fn lex_errors_are_reported_with_the_statements_before_them() {
        let inspection = inspect("SELECT 1; SELECT 'unterminated");
        assert!(inspection.lex_error);
        assert_eq!(inspection.statements.len(), 2);
        for sql in ["SELECT $$x", "SELECT \"x", "/* /* */", "SELECT E'\\'", "SELECT \"\""] {
            assert!(inspect(sql).lex_error, "{sql}");
        }
        assert!(inspector().inspect(b"SELECT U&'x'", false).lex_error);
    }

    #[test]
    fn non_standard_strings_change_where_literals_end() {
        let sql = b"SELECT 'a\\'; SET app.current_tenant_id = 1; --'";
        let off = inspector().inspect(sql, false);
        assert_eq!(off.statements.len(), 1);
        assert!(off.refusal().is_none());
        let on = inspector().inspect(sql, true);
        assert!(on.refusal().is_some());
        // The reverse: one literal when standard, a visible SET when not.
        let hidden = b"SELECT 'a\\'' ; SET app.current_tenant_id = 1; --'";
        assert!(inspector().inspect(hidden, true).refusal().is_none());
        assert!(inspector().inspect(hidden, false).refusal().is_some());
        let e_continued = "SELECT E'a'\n'\\'; SET app.current_tenant_id = 1; --'";
        assert!(refusal(e_continued).is_none(), "continuation keeps E'' rules");
    }

    #[test]
    fn hostile_inputs_do_not_panic() {
        let insp = inspector();
        let nested = "/*".repeat(100_000);
        assert!(insp.inspect(nested.as_bytes(), true).lex_error);
        let parens = "(".repeat(100_000) + ";" + &")".repeat(100_000);
        assert_eq!(insp.inspect(parens.as_bytes(), true).statements.len(), 1);
        let sets = "set ".repeat(50_000) + &"session ".repeat(50_000);
        assert!(insp.inspect(sets.as_bytes(), true).refusal().is_none());
        let dotted = "set ".to_string() + &"set.".repeat(50_000) + "x";
        let _ = insp.inspect(dotted.as_bytes(), true);
        let names = "set names a,".repeat(20_000);
        let _ = insp.inspect(names.as_bytes(), true);
        let atomic = "create function f() begin atomic ".to_string() + &"case ".repeat(50_000);
        assert_eq!(insp.inspect(atomic.as_bytes(), true).statements.len(), 1);
        for input in [
            &b"\xff\xfe\xfd"[..],
            b"set \xff.\xfe = 1",
            b"set_config(\xff",
            b"U&\"\\",
            b";;;",
            b"\0",
            b"reset",
            b"set",
            b"set local",
            b"cluster (",
            b"reindex (",
            b"deallocate prepare",
            b"prepare",
            b"select into",
            b"declare",
            b"ts_rewrite(",
            b"select ts_rewrite((((",
            b"create aggregate a (sfunc = 'set_config'",
        ] {
            let _ = insp.inspect(input, true);
            let _ = insp.inspect(input, false);
        }
    }

    /// xorshift64*: deterministic, dependency-free randomness for the fuzz loops.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const FRAGMENTS: &[&str] = &[
        "'",
        "\"",
        "$",
        "$$",
        "$a$",
        "/*",
        "*/",
        "--",
        "\n",
        " ",
        ";",
        "(",
        ")",
        "E'",
        "U&\"",
        "U&'",
        "B'",
        "\\",
        "''",
        "set ",
        "SET app.current_tenant_id = 1",
        "set_config(",
        "begin atomic ",
        "create function f() ",
        "end ",
        "case ",
        "uescape '!'",
        ".",
        ",",
        "select ",
        "$1",
        "1e",
        "0x",
        "+-",
        "\u{e9}",
        "reset ",
        "session ",
        "local ",
    ];

    #[test]
    fn fuzz_random_inputs_never_panic_and_spans_are_sane() {
        let insp = inspector();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..3000 {
            let mut input = Vec::new();
            for _ in 0..rng.below(40) {
                if rng.below(3) == 0 {
                    input.push(rng.next() as u8);
                } else {
                    input.extend_from_slice(FRAGMENTS[rng.below(FRAGMENTS.len())].as_bytes());
                }
            }
            for scs in [true, false] {
                let inspection = insp.inspect(&input, scs);
                let mut prev_end = 0;
                for stmt in &inspection.statements {
                    assert!(prev_end <= stmt.span.start && stmt.span.start < stmt.span.end);
                    assert!(stmt.span.end <= input.len());
                    prev_end = stmt.span.end;
                }
                if let Some(r) = inspection.refusal() {
                    assert!(!r.message().is_empty());
                }
            }
        }
    }

    /// Complete statements whose strings, comments and quotes must not disturb splitting.
    const SAFE_STATEMENTS: &[&str] = &[
        "SELECT 1",
        "SELECT 'a;b''c'",
        "SELECT E'x\\';y'",
        "SELECT $$;'\"$$",
        "SELECT $t$ $$ ; $t$",
        "SELECT \"we;ird\"\"\" FROM t",
        "SELECT 1 /* ; /* ; */ ' */",
        "SELECT 1 -- ; '\n",
        "SELECT 'a'\n'b;'",
        "SELECT U&'\\0041;'",
        "SELECT B'01'",
        "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); NOTIFY c)",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END",
        "SELECT set_config('search_path', 'x', false)",
    ];

    #[test]
    fn fuzz_forbidden_statement_is_found_wherever_it_is_placed() {
        let insp = inspector();
        let mut rng = Rng(42);
        for _ in 0..2000 {
            let mut parts: Vec<&str> =
                (0..rng.below(5)).map(|_| SAFE_STATEMENTS[rng.below(SAFE_STATEMENTS.len())]).collect();
            let clean = parts.join(";\n");
            assert!(insp.inspect(clean.as_bytes(), true).refusal().is_none(), "{clean}");
            let at = rng.below(parts.len() + 1);
            parts.insert(at, "/* x */ SET app.current_tenant_id = 7");
            let sql = parts.join(";\n");
            let inspection = insp.inspect(sql.as_bytes(), true);
            assert!(!inspection.lex_error, "{sql}");
            assert_eq!(inspection.statements.len(), parts.len(), "{sql}");
            assert!(inspection.statements[at].refusal.is_some(), "{sql}");
        }
    }
}
