//! Byte-level lexer reproducing PostgreSQL's scanner (scan.l plus the UESCAPE step of parser.c).

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use self::TokenKind as K;

/// Longest identifier PostgreSQL keeps (NAMEDATALEN - 1); longer ones are truncated by
/// the server. Token values are *not* truncated; callers comparing names must allow for it.
pub const MAX_IDENT_LEN: usize = 63;

/// The kind of a lexical token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Unquoted identifier or keyword; value is ASCII-lowercased.
    Ident,
    /// `"..."` identifier; value is verbatim with `""` undoubled.
    QuotedIdent,
    /// `U&"..."` identifier, including a trailing `UESCAPE '<c>'` clause in its span;
    /// value is the decoded UTF-8 text, or `None` when PostgreSQL would reject it.
    UnicodeIdent,
    /// `'...'` string; backslash escapes apply when standard_conforming_strings is off.
    String,
    /// `E'...'` string with backslash escapes.
    EscapeString,
    /// `U&'...'` string, including a trailing `UESCAPE '<c>'` clause in its span.
    UnicodeString,
    /// `B'...'` bit string; value is the raw digits.
    BitString,
    /// `X'...'` hexadecimal bit string; value is the raw digits.
    HexString,
    /// `N'...'` national character string; value decoded like a plain string.
    NationalString,
    /// `$$...$$` or `$tag$...$tag$`; value is the body.
    DollarString,
    /// Numeric literal; value is its source text.
    Number,
    /// Positional parameter `$n`; value is its source text.
    Param,
    /// Operator such as `+`, `<=`, `||`, `::`, `:=`, `..`; value is its source text.
    Operator,
    /// One of the punctuation bytes `( ) [ ] , ; . :`.
    Punct(u8),
    /// Any other single byte (a lone `$`, `\`, `{`, control bytes, ...).
    Other,
}

/// A token's decoded value (see [`Token::value`]).
type Value<'a> = Option<Cow<'a, [u8]>>;

/// One token: its kind, where it is in the input, and its decoded value if meaningful.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token<'a> {
    /// What kind of token this is.
    pub kind: TokenKind,
    /// Byte range in the input, quotes, prefixes and string continuations included.
    pub span: Range<usize>,
    /// Decoded identifier or string value (adjacent-literal continuations joined), or the
    /// source text of numbers, parameters and operators; `None` for punctuation and
    /// [`TokenKind::Other`], and for literals whose decoding PostgreSQL would reject.
    pub value: Option<Cow<'a, [u8]>>,
}

impl Token<'_> {
    /// True for an unquoted identifier spelling the keyword `kw` (given in lowercase).
    pub fn is_keyword(&self, kw: &str) -> bool {
        self.kind == K::Ident && self.value.as_deref() == Some(kw.as_bytes())
    }

    /// True for the punctuation byte `c`.
    pub fn is_punct(&self, c: u8) -> bool {
        self.kind == K::Punct(c)
    }

    /// True for any identifier form: unquoted, quoted or Unicode-escaped.
    pub fn is_identifier(&self) -> bool {
        matches!(self.kind, K::Ident | K::QuotedIdent | K::UnicodeIdent)
    }

    /// True for any string literal form.
    pub fn is_string(&self) -> bool {
        matches!(
            self.kind,
            K::String
                | K::EscapeString
                | K::UnicodeString
                | K::BitString
                | K::HexString
                | K::NationalString
                | K::DollarString
        )
    }

    /// The decoded value as a byte slice, if there is one.
    pub fn value_bytes(&self) -> Option<&[u8]> {
        self.value.as_deref()
    }
}

/// Why lexing stopped; PostgreSQL rejects the whole query string in each case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LexErrorKind {
    /// `/*` without its matching `*/` (comments nest).
    UnterminatedComment,
    /// A `'...'`-style string (any prefix) without its closing quote.
    UnterminatedString,
    /// A `"..."` or `U&"..."` identifier without its closing quote.
    UnterminatedQuotedIdent,
    /// A `$tag$` without the matching closing `$tag$`.
    UnterminatedDollarQuote,
    /// `""` or `U&""`.
    ZeroLengthIdent,
    /// `U&'...'` while standard_conforming_strings is off.
    UnicodeStringWithoutScs,
}

/// A lexing failure and the byte offset of the token that caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LexError {
    /// What went wrong.
    pub kind: LexErrorKind,
    /// Byte offset where the offending token starts.
    pub offset: usize,
}

impl fmt::Display for LexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            LexErrorKind::UnterminatedComment => "unterminated /* comment",
            LexErrorKind::UnterminatedString => "unterminated quoted string",
            LexErrorKind::UnterminatedQuotedIdent => "unterminated quoted identifier",
            LexErrorKind::UnterminatedDollarQuote => "unterminated dollar-quoted string",
            LexErrorKind::ZeroLengthIdent => "zero-length delimited identifier",
            LexErrorKind::UnicodeStringWithoutScs => "U&'' string with standard_conforming_strings off",
        };
        write!(f, "{what} at byte {}", self.offset)
    }
}

impl std::error::Error for LexError {}

fn err(kind: LexErrorKind, offset: usize) -> LexError {
    LexError { kind, offset }
}

/// All tokens of an input, and the error that stopped lexing early, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lexed<'a> {
    /// Tokens before the error (or all of them).
    pub tokens: Vec<Token<'a>>,
    /// The error that ended lexing, if any.
    pub error: Option<LexError>,
}

/// Lexes the whole input at once. See [`Lexer`] for a streaming version.
pub fn tokenize(input: &[u8], standard_conforming_strings: bool) -> Lexed<'_> {
    let mut lexed = Lexed::default();
    for item in Lexer::new(input, standard_conforming_strings) {
        match item {
            Ok(token) => lexed.tokens.push(token),
            Err(error) => lexed.error = Some(error),
        }
    }
    lexed
}

/// How the body of a single-quoted literal is scanned.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Quoting {
    /// `''` doubles a quote, backslash is an ordinary byte (xq, xus).
    Standard,
    /// `''` doubles a quote and backslash escapes the next byte (xe).
    Escape,
    /// The first quote ends the segment; no doubling at all (xb, xh).
    Bit,
}

/// Streaming lexer: an iterator of tokens that stops after the first error.
#[derive(Debug, Clone)]
pub struct Lexer<'a> {
    input: &'a [u8],
    pos: usize,
    scs: bool,
    done: bool,
    op_run: Option<OpRun>,
}

/// Facts about one run of operator characters, cached so that a run which PostgreSQL
/// splits into many tokens (e.g. a long `+-+-...`) is still scanned only once.
#[derive(Debug, Clone, Copy)]
struct OpRun {
    start: usize,
    /// End of the run, cut before the first embedded `/*` or `--`.
    end: usize,
    /// Last position in the run holding neither `+` nor `-`.
    last_unsigned: Option<usize>,
    /// Last position before `end - 1` holding one of ``~!@#^&|`?%``.
    last_exotic: Option<usize>,
}

impl OpRun {
    fn at(s: &[u8], start: usize) -> Self {
        let run_end = scan_while(s, start, is_op_char);
        let comment = |j: &usize| matches!(&s[*j..], [b'/', b'*', ..] | [b'-', b'-', ..]);
        let end = (start + 1..run_end).find(comment).unwrap_or(run_end);
        OpRun {
            start,
            end,
            last_unsigned: (start..end).rev().find(|&j| !matches!(s[j], b'+' | b'-')),
            last_exotic: (start..end - 1).rev().find(|&j| b"~!@#^&|`?%".contains(&s[j])),
        }
    }
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Result<Token<'a>, LexError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = match self.raw_token() {
            Some(Ok(tok)) if matches!(tok.kind, K::UnicodeIdent | K::UnicodeString) => {
                Some(Ok(self.finish_unicode(tok)))
            }
            other => other,
        };
        self.done = !matches!(item, Some(Ok(_)));
        item
    }
}

impl<'a> Lexer<'a> {
    /// Starts lexing `input`; `standard_conforming_strings` is the session's current value.
    pub fn new(input: &'a [u8], standard_conforming_strings: bool) -> Self {
        let scs = standard_conforming_strings;
        Lexer { input, pos: 0, scs, done: false, op_run: None }
    }

    fn token(&mut self, kind: TokenKind, span: Range<usize>, value: Value<'a>) -> Token<'a> {
        self.pos = span.end;
        Token { kind, span, value }
    }

    /// A token whose value is its own source text.
    fn text(&mut self, kind: TokenKind, span: Range<usize>) -> Token<'a> {
        let text = Cow::Borrowed(&self.input[span.clone()]);
        self.token(kind, span, Some(text))
    }

    /// Skips whitespace and both comment styles.
    fn skip_trivia(&mut self) -> Result<(), LexError> {
        let s = self.input;
        loop {
            match (s.get(self.pos), s.get(self.pos + 1)) {
                (Some(&c), _) if is_space(c) => self.pos += 1,
                (Some(b'-'), Some(b'-')) => self.pos = find_newline(s, self.pos).unwrap_or(s.len()),
                (Some(b'/'), Some(b'*')) => self.pos = skip_block_comment(s, self.pos)?,
                _ => return Ok(()),
            }
        }
    }

    /// Lexes one token without the UESCAPE post-processing.
    fn raw_token(&mut self) -> Option<Result<Token<'a>, LexError>> {
        if let Err(e) = self.skip_trivia() {
            return Some(Err(e));
        }
        let (s, i) = (self.input, self.pos);
        let c = *s.get(i)?;
        let next = s.get(i + 1).copied();
        let quote_next = next == Some(b'\'');
        let two_char_op = matches!((c, next), (b':', Some(b':' | b'=')) | (b'.', Some(b'.')));
        Some(match c {
            b'\'' => self.lex_string(i, i, K::String),
            b'"' => self.lex_quoted_ident(i, i, K::QuotedIdent),
            b'e' | b'E' if quote_next => self.lex_string(i, i + 1, K::EscapeString),
            b'b' | b'B' if quote_next => self.lex_string(i, i + 1, K::BitString),
            b'x' | b'X' if quote_next => self.lex_string(i, i + 1, K::HexString),
            b'n' | b'N' if quote_next => self.lex_string(i, i + 1, K::NationalString),
            b'u' | b'U' if next == Some(b'&') => match s.get(i + 2) {
                Some(b'\'') if !self.scs => Err(err(LexErrorKind::UnicodeStringWithoutScs, i)),
                Some(b'\'') => self.lex_string(i, i + 2, K::UnicodeString),
                Some(b'"') => self.lex_quoted_ident(i, i + 2, K::UnicodeIdent),
                _ => Ok(self.lex_ident(i)),
            },
            b'$' => self.lex_dollar(i),
            b'0'..=b'9' => Ok(self.lex_number(i)),
            b'.' if next.is_some_and(|d| d.is_ascii_digit()) => Ok(self.lex_number(i)),
            _ if is_ident_start(c) => Ok(self.lex_ident(i)),
            _ if two_char_op => Ok(self.text(K::Operator, i..i + 2)),
            b'(' | b')' | b'[' | b']' | b',' | b';' | b'.' | b':' => Ok(self.token(K::Punct(c), i..i + 1, None)),
            _ if is_op_char(c) => Ok(self.lex_operator(i)),
            _ => Ok(self.token(K::Other, i..i + 1, None)),
        })
    }

    fn lex_ident(&mut self, i: usize) -> Token<'a> {
        let end = scan_while(self.input, i + 1, is_ident_cont);
        let raw = &self.input[i..end];
        let value = if raw.iter().any(u8::is_ascii_uppercase) {
            Cow::Owned(raw.to_ascii_lowercase())
        } else {
            Cow::Borrowed(raw)
        };
        self.token(K::Ident, i..end, Some(value))
    }

    /// `"..."` and `U&"..."`: `""` stands for one quote; empty identifiers are errors.
    fn lex_quoted_ident(&mut self, start: usize, quote: usize, kind: TokenKind) -> Lexeme<'a> {
        let s = self.input;
        let mut i = quote + 1;
        let close = loop {
            let j = find_byte(s, i, b'"').ok_or(err(LexErrorKind::UnterminatedQuotedIdent, start))?;
            if s.get(j + 1) != Some(&b'"') {
                break j;
            }
            i = j + 2;
        };
        let raw = &s[quote + 1..close];
        if raw.is_empty() {
            return Err(err(LexErrorKind::ZeroLengthIdent, start));
        }
        let value = if i > quote + 1 { Cow::Owned(undouble(raw, b'"')) } else { Cow::Borrowed(raw) };
        Ok(self.token(kind, start..close + 1, Some(value)))
    }

    /// Single-quoted literals of every prefix, following string continuations
    /// (`'a'` newline `'b'`) which PostgreSQL scans in the *same* quoting mode.
    fn lex_string(&mut self, start: usize, quote: usize, kind: TokenKind) -> Lexeme<'a> {
        let s = self.input;
        let mode = match kind {
            K::EscapeString => Quoting::Escape,
            K::BitString | K::HexString => Quoting::Bit,
            K::UnicodeString => Quoting::Standard,
            _ if self.scs => Quoting::Standard,
            _ => Quoting::Escape,
        };
        let mut segments = Vec::new();
        let mut from = quote + 1;
        let end = loop {
            let close = scan_segment(s, from, mode).ok_or(err(LexErrorKind::UnterminatedString, start))?;
            segments.push(from..close);
            match continuation(s, close + 1) {
                Some(next_from) => from = next_from,
                None => break close + 1,
            }
        };
        let value = decode_segments(s, &segments, mode);
        Ok(self.token(kind, start..end, value))
    }

    /// `$n` parameters, dollar-quoted strings, or a lone `$`.
    fn lex_dollar(&mut self, i: usize) -> Lexeme<'a> {
        let s = self.input;
        if s.get(i + 1).is_some_and(u8::is_ascii_digit) {
            return Ok(self.text(K::Param, i..scan_while(s, i + 1, |c| c.is_ascii_digit())));
        }
        let mut j = i + 1;
        if s.get(j).is_some_and(|&c| is_ident_start(c)) {
            j = scan_while(s, j, |c| is_ident_cont(c) && c != b'$');
        }
        if s.get(j) != Some(&b'$') {
            // Not a delimiter: PostgreSQL returns the `$` alone and rescans the rest.
            return Ok(self.token(K::Other, i..i + 1, None));
        }
        let delim = &s[i..=j];
        let mut k = j + 1;
        loop {
            let d = find_byte(s, k, b'$').ok_or(err(LexErrorKind::UnterminatedDollarQuote, i))?;
            if s[d..].starts_with(delim) {
                let body = Cow::Borrowed(&s[j + 1..d]);
                return Ok(self.token(K::DollarString, i..d + delim.len(), Some(body)));
            }
            k = d + 1;
        }
    }

    /// Numbers, PG 16 style (`0x1F`, `1_000`, `1.5e3`, `.5`). Trailing identifier bytes
    /// are left for the next token, as PostgreSQL up to 15 did; PostgreSQL 16+ rejects
    /// such input outright, so splitting never hides anything the server would run.
    fn lex_number(&mut self, i: usize) -> Token<'a> {
        let s = self.input;
        let radix = match (s[i], s.get(i + 1)) {
            (b'0', Some(b'x' | b'X')) => Some(16),
            (b'0', Some(b'o' | b'O')) => Some(8),
            (b'0', Some(b'b' | b'B')) => Some(2),
            _ => None,
        };
        if let Some(end) = radix.and_then(|r| digits_end(s, i + 2, r)) {
            return self.text(K::Number, i..end);
        }
        let mut j = if s[i] == b'.' { i } else { digits_end(s, i, 10).unwrap_or(i + 1) };
        if s.get(j) == Some(&b'.') && s.get(j + 1) != Some(&b'.') {
            j = digits_end(s, j + 1, 10).unwrap_or(j + 1);
        }
        if matches!(s.get(j), Some(b'e' | b'E')) {
            let sign = usize::from(matches!(s.get(j + 1), Some(b'+' | b'-')));
            j = digits_end(s, j + 1 + sign, 10).unwrap_or(j);
        }
        self.text(K::Number, i..j)
    }

    /// Operator runs stop before an embedded comment start, and lose trailing `+`/`-`
    /// unless they contain a character that cannot be part of an SQL-standard operator.
    fn lex_operator(&mut self, i: usize) -> Token<'a> {
        let run = match self.op_run {
            Some(run) if run.start <= i && i < run.end => run,
            _ => OpRun::at(self.input, i),
        };
        self.op_run = Some(run);
        let mut end = run.end;
        let trailing_sign = matches!(self.input[end - 1], b'+' | b'-');
        if end - i > 1 && trailing_sign && run.last_exotic.is_none_or(|x| x < i) {
            end = run.last_unsigned.filter(|&q| q >= i).map_or(i + 1, |q| q + 1);
        }
        self.text(K::Operator, i..end)
    }

    /// Applies PostgreSQL's post-scan step for `U&` tokens: an optional
    /// `UESCAPE '<c>'` clause is absorbed into the token and the escapes are decoded.
    fn finish_unicode(&mut self, mut tok: Token<'a>) -> Token<'a> {
        let before = self.pos;
        let mut escape = Some(b'\\');
        match self.raw_token() {
            Some(Ok(kw)) if kw.is_keyword("uescape") => {
                tok.span.end = kw.span.end;
                let after_kw = self.pos;
                escape = None;
                match self.raw_token() {
                    Some(Ok(lit)) if matches!(lit.kind, K::String | K::EscapeString | K::DollarString) => {
                        tok.span.end = lit.span.end;
                        escape = lit.value_bytes().and_then(|v| match v {
                            &[c] if is_valid_uescape(c) => Some(c),
                            _ => None,
                        });
                    }
                    // The server rejects this; leave the token for the next call.
                    _ => self.pos = after_kw,
                }
            }
            _ => self.pos = before,
        }
        tok.value = match (escape, tok.value_bytes()) {
            (Some(esc), Some(raw)) => decode_unicode(raw, esc).map(Cow::Owned),
            _ => None,
        };
        tok
    }
}

type Lexeme<'a> = Result<Token<'a>, LexError>;

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0c | 0x0b)
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_cont(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

fn is_op_char(c: u8) -> bool {
    b"~!@#^&|`?+-*/%<>=".contains(&c)
}

/// First offset at or after `from` whose byte fails `pred` (or the end).
fn scan_while(s: &[u8], from: usize, pred: impl Fn(u8) -> bool) -> usize {
    s.get(from..).and_then(|t| t.iter().position(|&c| !pred(c))).map_or(s.len(), |p| p + from)
}

fn find_byte(s: &[u8], from: usize, b: u8) -> Option<usize> {
    s.get(from..)?.iter().position(|&c| c == b).map(|p| p + from)
}

fn find_newline(s: &[u8], from: usize) -> Option<usize> {
    s.get(from..)?.iter().position(|&c| c == b'\n' || c == b'\r').map(|p| p + from)
}

/// Returns the offset just past a (possibly nested) block comment starting at `start`.
fn skip_block_comment(s: &[u8], start: usize) -> Result<usize, LexError> {
    let mut depth = 0usize;
    let mut i = start + 2;
    while i < s.len() {
        match (s[i], s.get(i + 1)) {
            (b'/', Some(b'*')) => (depth, i) = (depth + 1, i + 2),
            (b'*', Some(b'/')) if depth == 0 => return Ok(i + 2),
            (b'*', Some(b'/')) => (depth, i) = (depth - 1, i + 2),
            _ => i += 1,
        }
    }
    Err(err(LexErrorKind::UnterminatedComment, start))
}

/// Finds the quote that closes a literal segment starting at `from`.
fn scan_segment(s: &[u8], from: usize, mode: Quoting) -> Option<usize> {
    let mut i = from;
    while i < s.len() {
        match s[i] {
            b'\\' if mode == Quoting::Escape => i += 2,
            b'\'' if mode != Quoting::Bit && s.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// PostgreSQL's `{quotecontinue}`: after a closing quote, whitespace containing at least
/// one newline (`--` comments allowed, block comments not) followed by a quote continues
/// the literal. Returns the offset just past that opening quote.
fn continuation(s: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    loop {
        match (s.get(i)?, s.get(i + 1)) {
            (b' ' | b'\t' | 0x0c | 0x0b, _) => i += 1,
            (b'-', Some(b'-')) => i = find_newline(s, i)?,
            (b'\n' | b'\r', _) => break,
            _ => return None,
        }
    }
    loop {
        match (s.get(i)?, s.get(i + 1)) {
            (&c, _) if is_space(c) => i += 1,
            // A comment here must itself end in a newline to keep the match going.
            (b'-', Some(b'-')) => i = find_newline(s, i)? + 1,
            (b'\'', _) => return Some(i + 1),
            _ => return None,
        }
    }
}

/// End of `digit (_? digit)*` in `radix` starting at `from`, or `None` if no digit there.
/// Non-decimal literals may also have a `_` right after their `0x`/`0o`/`0b` prefix.
fn digits_end(s: &[u8], from: usize, radix: u32) -> Option<usize> {
    let is_digit = |c: &u8| (*c as char).is_digit(radix);
    let mut i = from + usize::from(radix != 10 && s.get(from) == Some(&b'_'));
    if !s.get(i).is_some_and(is_digit) {
        return None;
    }
    loop {
        i += 1;
        match (s.get(i), s.get(i + 1)) {
            (Some(c), _) if is_digit(c) => {}
            (Some(b'_'), Some(c)) if is_digit(c) => i += 1,
            _ => return Some(i),
        }
    }
}

fn undouble(raw: &[u8], quote: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        out.push(raw[i]);
        i += if raw[i] == quote { 2 } else { 1 };
    }
    out
}

/// Decodes each literal segment and concatenates them. Escapes are decoded per segment
/// because the server's scanner never lets an escape sequence span a continuation.
fn decode_segments<'a>(s: &'a [u8], segments: &[Range<usize>], mode: Quoting) -> Value<'a> {
    if let [only] = segments {
        let raw = &s[only.clone()];
        let plain = match mode {
            Quoting::Bit => true,
            Quoting::Standard => !raw.contains(&b'\''),
            Quoting::Escape => !raw.contains(&b'\'') && !raw.contains(&b'\\'),
        };
        if plain {
            return Some(Cow::Borrowed(raw));
        }
    }
    let mut out = Vec::new();
    for seg in segments {
        let raw = &s[seg.clone()];
        match mode {
            Quoting::Bit => out.extend_from_slice(raw),
            Quoting::Standard => out.extend(undouble(raw, b'\'')),
            Quoting::Escape => out.extend(decode_escapes(raw)?),
        }
    }
    Some(Cow::Owned(out))
}

/// Reads exactly `n` hex digits at `at`.
fn hex_n(raw: &[u8], at: usize, n: usize) -> Option<u32> {
    let digits = raw.get(at..at + n)?;
    digits.iter().try_fold(0u32, |acc, &c| Some(acc * 16 + (c as char).to_digit(16)?))
}

/// Appends one escaped code point, pairing UTF-16 surrogates through `pending` exactly
/// as the server does; `None` where the server raises an error.
fn push_code_point(out: &mut Vec<u8>, pending: &mut Option<u32>, cp: u32) -> Option<()> {
    let cp = match (pending.take(), cp) {
        (Some(high), 0xDC00..=0xDFFF) => 0x10000 + ((high - 0xD800) << 10) + (cp - 0xDC00),
        (Some(_), _) | (None, 0 | 0xDC00..=0xDFFF) => return None,
        (None, 0xD800..=0xDBFF) => {
            *pending = Some(cp);
            return Some(());
        }
        (None, cp) => cp,
    };
    let ch = char::from_u32(cp)?;
    out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
    Some(())
}

/// Decodes an `E'...'` segment body (xe rules). `None` where the server raises an error.
fn decode_escapes(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut pending = None;
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        let e = raw.get(i + 1).copied();
        if c == b'\\' && matches!(e, Some(b'u' | b'U')) {
            let n = if e == Some(b'u') { 4 } else { 8 };
            push_code_point(&mut out, &mut pending, hex_n(raw, i + 2, n)?)?;
            i += 2 + n;
            continue;
        }
        if pending.is_some() {
            return None;
        }
        let (byte, used) = match (c, e) {
            (b'\\', Some(e)) => decode_simple_escape(&raw[i + 1..], e),
            (b'\'', _) => (b'\'', 1),
            _ => (c, 0),
        };
        out.push(byte);
        i += 1 + used;
    }
    pending.is_none().then_some(out)
}

/// Decodes the escape after a backslash (`rest` starts with `e`): octal, `\x` hex,
/// the C control letters, or the byte itself. Returns the byte and bytes used.
fn decode_simple_escape(rest: &[u8], e: u8) -> (u8, usize) {
    let digits = |from: usize, radix: u32, max: usize| {
        rest[from..].iter().take(max).take_while(|c| (**c as char).is_digit(radix)).count()
    };
    let value = |from: usize, len: usize, radix: u32| {
        let digits = rest[from..from + len].iter();
        digits.fold(0u32, |acc, &c| acc * radix + (c as char).to_digit(radix).unwrap_or(0))
    };
    match e {
        // The server stores \777 in an unsigned char, dropping the high bit.
        b'0'..=b'7' => {
            let len = digits(0, 8, 3);
            (value(0, len, 8) as u8, len)
        }
        b'x' if digits(1, 16, 2) > 0 => {
            let len = digits(1, 16, 2);
            (value(1, len, 16) as u8, 1 + len)
        }
        b'b' => (0x08, 1),
        b'f' => (0x0c, 1),
        b'n' => (b'\n', 1),
        b'r' => (b'\r', 1),
        b't' => (b'\t', 1),
        other => (other, 1),
    }
}

/// The server refuses these as UESCAPE characters.
fn is_valid_uescape(c: u8) -> bool {
    !(c.is_ascii_hexdigit() || matches!(c, b'+' | b'\'' | b'"') || is_space(c))
}

/// Decodes `U&` escapes (`<esc>XXXX`, `<esc>+XXXXXX`, `<esc><esc>`) like parser.c's
/// `str_udeescape`, producing UTF-8. `None` where the server raises an error.
fn decode_unicode(raw: &[u8], esc: u8) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut pending = None;
    let mut i = 0;
    while i < raw.len() {
        let next = raw.get(i + 1).copied();
        if raw[i] != esc || next == Some(esc) {
            if pending.is_some() {
                return None;
            }
            out.push(raw[i]);
            i += if raw[i] == esc { 2 } else { 1 };
            continue;
        }
        let (cp, used) = match next {
            Some(b'+') => (hex_n(raw, i + 2, 6)?, 8),
            _ => (hex_n(raw, i + 1, 4)?, 5),
        };
        push_code_point(&mut out, &mut pending, cp)?;
        i += used;
    }
    pending.is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lex(input: &str) -> Vec<Token<'_>> {
        let lexed = tokenize(input.as_bytes(), true);
        assert_eq!(lexed.error, None, "unexpected error lexing {input:?}");
        lexed.tokens
    }

    fn kinds(input: &str) -> Vec<TokenKind> {
        lex(input).iter().map(|t| t.kind).collect()
    }

    fn values(input: &str) -> Vec<Option<Vec<u8>>> {
        lex(input).iter().map(|t| t.value.as_deref().map(<[u8]>::to_vec)).collect()
    }

    fn one(input: &str, scs: bool) -> Token<'_> {
        let lexed = tokenize(input.as_bytes(), scs);
        assert_eq!(lexed.error, None, "unexpected error lexing {input:?}");
        assert_eq!(lexed.tokens.len(), 1, "expected one token in {input:?}: {:?}", lexed.tokens);
        lexed.tokens.into_iter().next().unwrap()
    }

    fn value_of(input: &str, scs: bool) -> Option<Vec<u8>> {
        one(input, scs).value.map(|v| v.into_owned())
    }

    fn error_of(input: &[u8], scs: bool) -> Option<LexErrorKind> {
        tokenize(input, scs).error.map(|e| e.kind)
    }

    #[test]
    fn identifiers_are_lowercased_and_keep_dollars_and_high_bytes() {
        let toks = lex("SELECT Foo_1$x \u{e9}T\u{c9}");
        let vals: Vec<&[u8]> = toks.iter().map(|t| t.value_bytes().unwrap()).collect();
        assert_eq!(vals[0], b"select");
        assert_eq!(vals[1], b"foo_1$x");
        // Only ASCII letters are folded; the multibyte character is kept verbatim.
        assert_eq!(vals[2], "\u{e9}t\u{c9}".as_bytes());
        assert!(toks.iter().all(|t| t.kind == TokenKind::Ident));
        assert!(toks[0].is_keyword("select"));
    }

    #[test]
    fn quoted_identifiers_keep_case_and_undouble_quotes() {
        let t = one(r#""My ""Table""""#, true);
        assert_eq!(t.kind, TokenKind::QuotedIdent);
        assert_eq!(t.value.as_deref(), Some(&b"My \"Table\""[..]));
        assert_eq!(value_of(r#""app.current_tenant_id""#, true).unwrap(), b"app.current_tenant_id");
        assert_eq!(error_of(br#"select """#, true), Some(LexErrorKind::ZeroLengthIdent));
        assert_eq!(error_of(br#"select "abc"#, true), Some(LexErrorKind::UnterminatedQuotedIdent));
    }

    #[test]
    fn unicode_identifiers_decode_with_default_and_custom_escape() {
        let t = one(r#"U&"\0061pp""#, true);
        assert_eq!(t.kind, TokenKind::UnicodeIdent);
        assert_eq!(t.value.as_deref(), Some(&b"app"[..]));
        let t = one(r#"u&"d!0061t!+000061" UESCAPE '!'"#, true);
        assert_eq!(t.value.as_deref(), Some(&b"data"[..]));
        assert_eq!(t.span.end, r#"u&"d!0061t!+000061" UESCAPE '!'"#.len());
        assert_eq!(value_of(r#"U&"\D83D\DE00""#, true).unwrap(), "\u{1F600}".as_bytes());
        assert_eq!(value_of(r#"U&"a\\b""#, true).unwrap(), b"a\\b");
        assert_eq!(value_of(r#"U&"""\0041""""#, true).unwrap(), b"\"A\"");
    }

    #[test]
    fn invalid_unicode_escapes_have_no_value() {
        for bad in [
            r#"U&"\00zz""#,
            r#"U&"\D83D""#,
            r#"U&"\DE00""#,
            r#"U&"\0000""#,
            r#"U&"\+110000""#,
            r#"U&"x\""#,
            r#"U&"x" UESCAPE 'a'"#,
            r#"U&"x" UESCAPE '+'"#,
            r#"U&"x" UESCAPE 'ab'"#,
        ] {
            assert_eq!(value_of(bad, true), None, "{bad}");
        }
        // UESCAPE must be followed by a simple string literal; the next token stays put.
        let toks = lex(r#"U&"x" UESCAPE 1"#);
        assert_eq!(toks.len(), 2);
        assert_eq!(toks[0].value, None);
        assert_eq!(toks[1].kind, TokenKind::Number);
    }

    #[test]
    fn uescape_lookahead_restores_position() {
        let toks = lex(r#"U&"a" , b"#);
        assert_eq!(kinds(r#"U&"a" , b"#), [TokenKind::UnicodeIdent, TokenKind::Punct(b','), TokenKind::Ident]);
        assert_eq!(toks[0].span, 0..5);
        // `u&` not followed by a quote is the identifier `u` and an operator.
        assert_eq!(kinds("u&x"), [TokenKind::Ident, TokenKind::Operator, TokenKind::Ident]);
    }

    #[test]
    fn standard_strings_double_quotes_and_keep_backslashes() {
        assert_eq!(value_of("'it''s'", true).unwrap(), b"it's");
        assert_eq!(value_of(r"'a\b'", true).unwrap(), br"a\b");
        // With standard_conforming_strings on, backslash-quote does not escape the quote.
        assert_eq!(kinds(r"'a\' 'b'"), [TokenKind::String, TokenKind::String]);
    }

    #[test]
    fn non_standard_strings_use_backslash_escapes() {
        let t = one(r"'a\'b'", false);
        assert_eq!(t.kind, TokenKind::String);
        assert_eq!(t.value.as_deref(), Some(&b"a'b"[..]));
        assert_eq!(value_of(r"'x\\'", false).unwrap(), b"x\\");
        let toks = tokenize(br"select 'a\'; set x = 1; --'", false);
        assert_eq!(toks.error, None);
        assert_eq!(toks.tokens.len(), 2, "the semicolons are inside the string");
        assert_eq!(error_of(br"select 'a\'", false), Some(LexErrorKind::UnterminatedString));
    }

    #[test]
    fn escape_strings_decode_all_escape_forms() {
        let t = one(r"E'\n\t\b\f\r\x41\101\u0042\U00000043\\\'\q'''", true);
        assert_eq!(t.kind, TokenKind::EscapeString);
        assert_eq!(t.value.as_deref(), Some(&b"\n\t\x08\x0c\rAABC\\'q'"[..]));
        assert_eq!(value_of(r"e'\xZ'", true).unwrap(), b"xZ");
        assert_eq!(value_of(r"E'\777'", true).unwrap(), [0xFF]);
        assert_eq!(value_of(r"E'\uD83D\uDE00'", true).unwrap(), "\u{1F600}".as_bytes());
        for bad in [r"E'\u12'", r"E'\uD83Dx'", r"E'\uDE00'", r"E'\u0000'", r"E'\U00110000'"] {
            assert_eq!(value_of(bad, true), None, "{bad}");
        }
    }

    #[test]
    fn adjacent_literals_with_newline_are_one_token() {
        let t = one("'a'\n'b'", true);
        assert_eq!(t.value.as_deref(), Some(&b"ab"[..]));
        assert_eq!(t.span, 0..7);
        assert_eq!(value_of("'a' -- c\n  -- d\n\t'b'", true).unwrap(), b"ab");
        assert_eq!(value_of("'a'\r\n'b'\n'c'", true).unwrap(), b"abc");
        // No newline, or a block comment in between: two separate literals.
        assert_eq!(kinds("'a' 'b'"), [TokenKind::String, TokenKind::String]);
        assert_eq!(kinds("'a'/*x*/\n'b'"), [TokenKind::String, TokenKind::String]);
        assert_eq!(kinds("'a'\n/*x*/'b'"), [TokenKind::String, TokenKind::String]);
        assert_eq!(kinds("'a' -- c 'b'"), [TokenKind::String]);
    }

    #[test]
    fn continuations_keep_the_quoting_mode_of_the_first_part() {
        // The continued part of an E'' string is scanned with backslash escapes.
        let t = one("E'a'\n'\\'; set x=1; --'", true);
        assert_eq!(t.value.as_deref(), Some(&b"a'; set x=1; --"[..]));
        // Escapes never span the joint.
        assert_eq!(value_of("E'\\12'\n'3'", true).unwrap(), b"\n3");
        // Bit strings have no quote doubling, so '' ends them.
        assert_eq!(kinds("B'1''0'"), [TokenKind::BitString, TokenKind::String]);
        assert_eq!(value_of("B'1'\n'0'", true).unwrap(), b"10");
        assert_eq!(value_of("x'1F'", true).unwrap(), b"1F");
        // U& strings are joined first, then unescaped (as the server does).
        assert_eq!(value_of("U&'\\00'\n'41'", true).unwrap(), b"A");
    }

    #[test]
    fn prefixes_only_apply_at_token_start() {
        assert_eq!(kinds("abe'x'"), [TokenKind::Ident, TokenKind::String]);
        assert_eq!(kinds("n'x'"), [TokenKind::NationalString]);
        assert_eq!(value_of("N'it''s'", true).unwrap(), b"it's");
        assert_eq!(kinds("1e'x'"), [TokenKind::Number, TokenKind::EscapeString]);
    }

    #[test]
    fn unicode_strings_require_standard_strings() {
        assert_eq!(value_of("U&'\\0041b'", true).unwrap(), b"Ab");
        assert_eq!(value_of("U&'!0041' UESCAPE '!'", true).unwrap(), b"A");
        assert_eq!(error_of(b"select U&'x'", false), Some(LexErrorKind::UnicodeStringWithoutScs));
    }

    #[test]
    fn dollar_quotes_and_parameters() {
        let t = one("$$a'b$$", true);
        assert_eq!(t.kind, TokenKind::DollarString);
        assert_eq!(t.value.as_deref(), Some(&b"a'b"[..]));
        assert_eq!(value_of("$fn$ $x$ ; $fn $fn$", true).unwrap(), b" $x$ ; $fn ");
        assert_eq!(value_of("$a$x$ab$y$a$", true).unwrap(), b"x$ab$y");
        assert_eq!(value_of("$\u{e9}$x$\u{e9}$", true).unwrap(), b"x");
        assert_eq!(kinds("$1 $23"), [TokenKind::Param, TokenKind::Param]);
        assert_eq!(kinds("$1abc"), [TokenKind::Param, TokenKind::Ident]);
        assert_eq!(kinds("$abc"), [TokenKind::Other, TokenKind::Ident]);
        assert_eq!(kinds("a$b$c"), [TokenKind::Ident]);
        assert_eq!(error_of(b"select $$abc", true), Some(LexErrorKind::UnterminatedDollarQuote));
        assert_eq!(error_of(b"select $q$abc$Q$", true), Some(LexErrorKind::UnterminatedDollarQuote));
    }

    #[test]
    fn numbers() {
        let texts: Vec<Vec<u8>> =
            values("1 1.5e3 .5 1. 0x1F 0o17 0b101 1_000 2E-3").into_iter().map(Option::unwrap).collect();
        assert_eq!(
            texts,
            ["1", "1.5e3", ".5", "1.", "0x1F", "0o17", "0b101", "1_000", "2E-3"].map(|s| s.as_bytes().to_vec())
        );
        assert_eq!(kinds("1..2"), [TokenKind::Number, TokenKind::Operator, TokenKind::Number]);
        assert_eq!(kinds("0x'1F'"), [TokenKind::Number, TokenKind::HexString]);
        assert_eq!(kinds("123abc"), [TokenKind::Number, TokenKind::Ident]);
        assert_eq!(kinds("1e+x"), [TokenKind::Number, TokenKind::Ident, TokenKind::Operator, TokenKind::Ident]);
    }

    #[test]
    fn operators_and_punctuation() {
        let toks = lex("a<=b||c::int:=d=>e..f;(g)[1],h.i:j");
        let ops: Vec<&[u8]> =
            toks.iter().filter(|t| t.kind == TokenKind::Operator).map(|t| t.value_bytes().unwrap()).collect();
        assert_eq!(ops, [&b"<="[..], b"||", b"::", b":=", b"=>", b".."]);
        let puncts: Vec<u8> = toks
            .iter()
            .filter_map(|t| match t.kind {
                TokenKind::Punct(c) => Some(c),
                _ => None,
            })
            .collect();
        assert_eq!(puncts, b";()[],.:");
        assert_eq!(kinds("{\\"), [TokenKind::Other, TokenKind::Other]);
    }

    #[test]
    fn operators_stop_at_comments_and_drop_trailing_signs() {
        assert_eq!(kinds("1 */* c */ 2"), [TokenKind::Number, TokenKind::Operator, TokenKind::Number]);
        assert_eq!(kinds("a +-- c\n b"), [TokenKind::Ident, TokenKind::Operator, TokenKind::Ident]);
        let ops =
            |s: &'static str| -> Vec<Vec<u8>> { lex(s).iter().map(|t| t.value_bytes().unwrap().to_vec()).collect() };
        assert_eq!(ops("=-"), [b"=".to_vec(), b"-".to_vec()]);
        assert_eq!(ops("?-"), [b"?-".to_vec()]);
        assert_eq!(ops("<=+-"), [b"<=".to_vec(), b"+".to_vec(), b"-".to_vec()]);
        assert_eq!(ops("@-+"), [b"@-+".to_vec()]);
        assert_eq!(ops("+-+"), [b"+".to_vec(), b"-".to_vec(), b"+".to_vec()]);
    }

    #[test]
    fn comments_nest_and_line_comments_end_at_newline() {
        assert_eq!(kinds("/* a /* b */ c */ x"), [TokenKind::Ident]);
        assert_eq!(kinds("/*/ x */ y"), [TokenKind::Ident]);
        assert_eq!(kinds("/**/x/***/"), [TokenKind::Ident]);
        assert_eq!(kinds("-- a\rx -- b"), [TokenKind::Ident]);
        assert_eq!(error_of(b"/* a /* b */", true), Some(LexErrorKind::UnterminatedComment));
        assert_eq!(error_of(b"x /* ", true), Some(LexErrorKind::UnterminatedComment));
        assert_eq!(kinds("\x0bx\x0c"), [TokenKind::Ident]);
    }

    #[test]
    fn unterminated_literals_are_errors() {
        for (input, kind) in [
            (&b"'abc"[..], LexErrorKind::UnterminatedString),
            (b"E'abc\\'", LexErrorKind::UnterminatedString),
            (b"E'abc\\", LexErrorKind::UnterminatedString),
            (b"B'01", LexErrorKind::UnterminatedString),
            (b"'a'\n'b", LexErrorKind::UnterminatedString),
            (b"U&\"ab", LexErrorKind::UnterminatedQuotedIdent),
            (b"U&\"\"", LexErrorKind::ZeroLengthIdent),
        ] {
            let err = tokenize(input, true).error.expect("error expected");
            assert_eq!(err.kind, kind, "{:?}", String::from_utf8_lossy(input));
            assert!(!err.to_string().is_empty());
        }
        let lexed = tokenize(b"select 1, 'x", true);
        assert_eq!(lexed.tokens.len(), 3);
        assert_eq!(lexed.error.unwrap().offset, 10);
    }

    #[test]
    fn iterator_stops_after_an_error() {
        let mut lexer = Lexer::new(b"a 'b", true);
        assert!(matches!(lexer.next(), Some(Ok(_))));
        assert!(matches!(lexer.next(), Some(Err(_))));
        assert!(lexer.next().is_none());
    }

    #[test]
    fn hostile_inputs_do_not_panic_and_stay_linear() {
        let nested = "/*".repeat(100_000);
        assert_eq!(error_of(nested.as_bytes(), true), Some(LexErrorKind::UnterminatedComment));
        let balanced = format!("{}{} x", "/*".repeat(100_000), "*/".repeat(100_000));
        assert_eq!(tokenize(balanced.as_bytes(), true).tokens.len(), 1);
        let plus = "+".repeat(200_000);
        assert_eq!(tokenize(plus.as_bytes(), true).tokens.len(), 200_000);
        let signs = "+-".repeat(100_000) + "~";
        assert_eq!(tokenize(signs.as_bytes(), true).tokens.len(), 1);
        let dollars = format!("$ab$ {} ", "$a".repeat(100_000));
        assert!(tokenize(dollars.as_bytes(), true).error.is_some());
        let quotes = "'".repeat(100_001);
        assert!(tokenize(quotes.as_bytes(), false).error.is_some());
        let uescapes = "U&\"a\" ".repeat(50_000);
        assert_eq!(tokenize(uescapes.as_bytes(), true).tokens.len(), 50_000);
        for input in [&b"\xff\xfe'\x80"[..], b"\x00", b"\\", b"$", b"e", b"U&", b"0x", b".", b"\xc3"] {
            let _ = tokenize(input, true);
            let _ = tokenize(input, false);
        }
    }

    #[test]
    fn spans_cover_tokens_in_order() {
        let input = "SELECT /* c */ 'a''b', E'\\n' -- x\n FROM \"t\" WHERE $1 = $$d$$;";
        let toks = lex(input);
        let texts: Vec<&str> = toks.iter().map(|t| &input[t.span.clone()]).collect();
        assert_eq!(texts, ["SELECT", "'a''b'", ",", "E'\\n'", "FROM", "\"t\"", "WHERE", "$1", "=", "$$d$$", ";"]);
    }
}
