//! SQL text analysis for pgtenant: a byte-level PostgreSQL lexer and a statement
//! inspector that splits a query string into statements the way the server does and
//! classifies each one (transaction control, session-state effects, and attempts to
//! change settings the proxy depends on). Everything here is pure: no I/O, no global
//! state, linear time, no recursion and no panics on any input (including invalid
//! UTF-8), so it can be fed arbitrary client bytes and fuzzed directly.

pub mod inspect;
pub mod lexer;

pub use inspect::{DiscardKind, Inspection, Inspector, Refusal, RefusalReason, SessionEffect, Statement, TxControl};
pub use lexer::{tokenize, LexError, LexErrorKind, Lexed, Lexer, Token, TokenKind};
