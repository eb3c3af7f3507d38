//! Auditing a database for tenant isolation: `pgtenant doctor` and `pgtenant policy`.
//!
//! - [`connect`] (with [`client_tls`]): database URLs, sslmodes, tokio-postgres over rustls.
//! - [`catalog`]: one read of the system catalogs into plain data.
//! - [`checks`]: pure checks over that data, each yielding [`report::Finding`]s with an id,
//!   a severity, the object, a one-line why and the SQL that fixes it.
//! - [`policy`]: the idempotent RLS SQL for every tenant table (pure), with [`signed`]: the
//!   database side of the signed tenant context (key table, verifying function; pure).
//! - [`probe`]: live isolation checks through a running proxy with two tenants' tokens.
//! - [`report`]: human and JSON output, exit codes.
//!
//! Nothing here is used by the proxy itself; it only reuses [`crate::tls`] and
//! [`crate::upstream::binding`].

pub mod catalog;
pub mod checks;
pub mod client_tls;
pub mod connect;
pub mod policy;
pub mod probe;
pub mod report;
pub mod signed;

pub use catalog::{Catalog, Scope};
pub use connect::Target;
pub use report::{Finding, Report, Severity};

/// Why an audit could not run.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Bad arguments (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// The database (or proxy) could not be reached or refused the login (exit code 1).
    #[error("could not connect: {0}")]
    Connect(String),
    /// A catalog query failed (exit code 1).
    #[error("catalog query failed: {0}")]
    Query(String),
    /// The probe could not run a step it needs (exit code 1).
    #[error("probe could not run: {0}")]
    Probe(String),
}

impl AuditError {
    /// The process exit code for this error: 2 for bad usage, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            AuditError::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// A tokio-postgres error as one line: the server's severity, SQLSTATE and message when there
/// is one, else the error and its sources.
pub fn describe_error(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// `s` as an SQL string literal.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_double_quotes() {
        assert_eq!(literal("app.x"), "'app.x'");
        assert_eq!(literal("a'b"), "'a''b'");
    }
}
