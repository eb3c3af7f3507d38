//! Integration-test support: throwaway PostgreSQL, the proxy launcher, and a raw protocol client.
//!
//! Use it from a test file with `mod support;`. Each test crate uses a subset, hence the
//! `dead_code` allowance below.
//!
//! - [`install`]: pinned npm / pip packages installed once per lock file.
//! - [`pg`]: [`PgCluster`], a real PostgreSQL cluster in a temp dir with the reference RLS schema.
//! - [`proxy`]: [`Proxy`], the `pgtenant` binary started against a cluster, and JWT minting.
//! - [`raw`]: [`RawClient`], a byte-level protocol client for exact-sequence assertions.
//! - [`util`]: free ports, random strings, log tails.
#![allow(dead_code)]
#![allow(unused_imports)]

pub mod install;
pub mod pg;
pub mod proxy;
pub mod raw;
pub mod util;

pub use pg::{PgCluster, TENANT_A, TENANT_B};
pub use proxy::{default_claims, mint, toml_str, Proxy, ProxyOptions};
pub use raw::{cancel, summarize, ErrorFields, LoginInfo, Message, RawClient};
