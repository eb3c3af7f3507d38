//! One client connection: login, then the transaction-pooling loop that
//! injects the tenant and filters replies.

pub mod backoff;
pub mod client;
pub mod inject;
pub mod login;
pub mod outstanding;
pub mod params;
pub mod prepared;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use crate::wire::build::{self, Severity};

/// An error to report to the client before closing its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fatal {
    /// SQLSTATE.
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
}

impl Fatal {
    /// A FATAL with code and message.
    pub fn new(code: &'static str, message: impl Into<String>) -> Fatal {
        Fatal { code, message: message.into(), hint: None }
    }

    /// Adds a hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Fatal {
        self.hint = Some(hint.into());
        self
    }

    /// Writes the ErrorResponse to `w`, ignoring write errors (the peer may be gone).
    pub async fn send<W: tokio::io::AsyncWrite + Unpin>(&self, w: &mut W) {
        let mut buf = BytesMut::new();
        build::error_response(&mut buf, Severity::Fatal, self.code, &self.message, self.hint.as_deref());
        let _ = w.write_all(&buf).await;
        let _ = w.flush().await;
    }
}
