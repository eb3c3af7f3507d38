//! pgtenant: a tenant-aware PostgreSQL wire-protocol proxy.
//!
//! A client logs in with a JWT as its password; every transaction it runs on
//! the shared pool of `upstream.user` connections starts with the token's
//! tenant set transaction-locally, so row-level security isolates tenants.
//!
//! Map of the modules, from the outside in:
//! - [`config`]: `proxy.toml` plus `PGTENANT_<SECTION>_<KEY>` overrides, validated once.
//! - [`server`]: the accept loop and the state every session shares.
//! - [`session`]: one client: [`session::login`] (TLS, startup checks, JWT),
//!   [`session::client`] (the pooling loop), [`session::inject`] (where the
//!   tenant goes), [`session::outstanding`] (which replies to forward, drop or rewrite).
//! - [`upstream`]: server connections ([`upstream::connect`]) and the [`upstream::pool`].
//! - [`auth`]: JWT verification (one key, or a JWKS kept fresh by [`auth::keystore`]) and the
//!   validated [`auth::tenant::TenantId`].
//! - [`sql`]: the SQL lexer and statement inspector (pure).
//! - [`wire`]: protocol framing and message builders (pure).
//! - [`http`], [`health`], [`metrics`]: `/metrics`, `/health`, `/ready`.
//! - [`cancel`], [`tls`], [`net`]: cancel keys, rustls configuration, TCP-or-TLS streams.
//! - [`demo`]: `pgtenant demo`, a throwaway PostgreSQL with the reference schema behind the proxy.
//! - [`audit`]: `pgtenant doctor` and `pgtenant policy` (a catalog audit, the RLS SQL
//!   generator and the live probe); a client of the database, not part of the proxy.
//!
//! `wire` and `sql` never import the networking modules, `upstream`
//! never imports `session`, and nothing imports `audit`.

#![forbid(unsafe_code)]

pub mod audit;
pub mod auth;
pub mod cancel;
pub mod config;
pub mod demo;
pub mod health;
pub mod http;
pub mod metrics;
pub mod net;
pub mod reload;
pub mod server;
pub mod session;
pub mod sql;
pub mod tls;
pub mod upstream;
pub mod wire;
