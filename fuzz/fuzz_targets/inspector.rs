//! Fuzzes the SQL lexer (`sql::lexer`) and statement inspector (`sql::inspect::Inspector`)
//! on arbitrary bytes (valid UTF-8 or not), with standard_conforming_strings on and off.
//!
//! Checks, besides "never panics":
//! - tokens are non-empty, in order, non-overlapping and inside the input; a lex error's
//!   offset is at or after the end of the last token; unquoted identifiers are the
//!   lowercased source and numbers/parameters/operators carry their source text;
//! - `Inspection::lex_error` agrees with the lexer; statement spans are non-empty, inside
//!   the input, in order, non-overlapping, and start and end on token boundaries;
//!   `Inspection::refusal` is the first statement's refusal;
//! - inspecting the same input twice gives the same result;
//! - an input with no backslash and no `&'` lexes and inspects the same with
//!   standard_conforming_strings on and off;
//! - tamper check: when the input lexes cleanly (and, for the plain suffix, does not end in
//!   an open `--` comment), appending `; SET app.current_tenant_id = 'x'` (or the same after
//!   a newline) leaves the input's tokens as they were, lexes the suffix as its own tokens,
//!   and the statement holding that `SET` is refused; when the `SET` starts its own
//!   statement the refusal is `SetCommand` on the tenant setting.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pgtenant::sql::{tokenize, Inspection, Inspector, RefusalReason, Token, TokenKind};

const TENANT: &str = "app.current_tenant_id";
const SUFFIX: &[u8] = b"; SET app.current_tenant_id = 'x'";

fn inspector() -> &'static Inspector {
    static INSPECTOR: OnceLock<Inspector> = OnceLock::new();
    INSPECTOR.get_or_init(|| Inspector::new(TENANT))
}

fuzz_target!(|data: &[u8]| {
    for scs in [true, false] {
        check(data, scs);
    }
    // standard_conforming_strings only changes what a backslash means in '...' and whether
    // U&'...' is allowed: without either, both settings must read the text the same way.
    if !data.contains(&b'\\') && !data.windows(2).any(|w| w == b"&'") {
        assert_eq!(tokenize(data, true), tokenize(data, false), "scs changed the tokens");
        assert_eq!(inspector().inspect(data, true), inspector().inspect(data, false), "scs changed the inspection");
    }
});

fn check(sql: &[u8], scs: bool) {
    let lexed = tokenize(sql, scs);
    check_tokens(sql, &lexed.tokens);
    if let Some(e) = lexed.error {
        let last_end = lexed.tokens.last().map_or(0, |t| t.span.end);
        assert!(e.offset >= last_end && e.offset < sql.len(), "{e:?} after token end {last_end}");
    }

    let inspection = inspector().inspect(sql, scs);
    assert_eq!(inspection, inspector().inspect(sql, scs), "inspection is not deterministic");
    assert_eq!(inspection.lex_error, lexed.error.is_some());
    check_statements(&inspection, &lexed.tokens, sql.len());

    if lexed.error.is_none() {
        // A newline first closes any trailing `--` comment; the plain suffix only when none is open.
        tamper(sql, b"\n", scs);
        if !ends_in_line_comment(sql, lexed.tokens.last().map_or(0, |t| t.span.end)) {
            tamper(sql, b"", scs);
        }
    }
}

fn check_tokens(sql: &[u8], tokens: &[Token<'_>]) {
    let mut prev_end = 0;
    for tok in tokens {
        let span = tok.span.clone();
        assert!(prev_end <= span.start && span.start < span.end && span.end <= sql.len(), "{tok:?}");
        prev_end = span.end;
        let src = &sql[span];
        match tok.kind {
            TokenKind::Ident => assert_eq!(tok.value_bytes(), Some(&src.to_ascii_lowercase()[..]), "{tok:?}"),
            TokenKind::Number | TokenKind::Param | TokenKind::Operator => {
                assert_eq!(tok.value_bytes(), Some(src), "{tok:?}")
            }
            TokenKind::Punct(c) => assert_eq!(src, [c], "{tok:?}"),
            TokenKind::Other => assert_eq!(src.len(), 1, "{tok:?}"),
            _ => {}
        }
    }
}

fn check_statements(inspection: &Inspection, tokens: &[Token<'_>], len: usize) {
    let mut prev_end = 0;
    for stmt in &inspection.statements {
        let span = stmt.span.clone();
        assert!(prev_end <= span.start && span.start < span.end && span.end <= len, "{stmt:?}");
        prev_end = span.end;
        assert!(tokens.iter().any(|t| t.span.start == span.start), "statement start is no token start: {stmt:?}");
        assert!(tokens.iter().any(|t| t.span.end == span.end), "statement end is no token end: {stmt:?}");
    }
    let first = inspection.statements.iter().find_map(|s| s.refusal.as_ref());
    assert_eq!(inspection.refusal(), first);
}

/// Whether the trivia after the last token holds a `--` with no newline after it. Over-eager
/// (a `--` inside a block comment counts too), which only skips some tamper checks.
fn ends_in_line_comment(sql: &[u8], last_token_end: usize) -> bool {
    let tail = &sql[last_token_end..];
    match tail.windows(2).rposition(|w| w == b"--") {
        Some(p) => !tail[p..].contains(&b'\n'),
        None => false,
    }
}

fn tamper(sql: &[u8], sep: &[u8], scs: bool) {
    let mut text = sql.to_vec();
    text.extend_from_slice(sep);
    text.extend_from_slice(SUFFIX);
    let base = tokenize(sql, scs);
    let lexed = tokenize(&text, scs);
    assert!(lexed.error.is_none(), "suffix made a clean input fail to lex: {:?}", lexed.error);

    // The input's tokens are unchanged, and the suffix lexes on its own.
    let n = base.tokens.len();
    assert!(lexed.tokens.len() >= n && lexed.tokens[..n] == base.tokens[..], "suffix changed the input's tokens");
    let offset = sql.len() + sep.len();
    let suffix_alone = tokenize(SUFFIX, scs);
    let shifted: Vec<_> = lexed.tokens[n..].iter().map(|t| (t.kind, t.span.start - offset, t.value_bytes())).collect();
    let expected: Vec<_> = suffix_alone.tokens.iter().map(|t| (t.kind, t.span.start, t.value_bytes())).collect();
    assert_eq!(shifted, expected, "suffix lexed differently after the input");

    let set_at = offset + 2;
    let inspection = inspector().inspect(&text, scs);
    let stmt = inspection
        .statements
        .iter()
        .find(|s| s.span.contains(&set_at))
        .unwrap_or_else(|| panic!("no statement holds the appended SET: {:?}", inspection.statements));
    let refusal = stmt.refusal.as_ref().unwrap_or_else(|| panic!("appended SET not refused: {stmt:?}"));
    if stmt.span.start == set_at {
        assert_eq!((refusal.setting.as_str(), refusal.reason), (TENANT, RefusalReason::SetCommand));
    }
}
