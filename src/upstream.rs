//! The PostgreSQL side of the proxy: logging in as `upstream.user` and the
//! pool of server connections. Never imports `session`.

pub mod binding;
pub mod connect;
pub mod gate;
pub mod pool;
pub mod role;

pub use connect::{ServerConn, UpstreamError};
pub use gate::Owner;
pub use pool::{Pool, PoolError, Pooled};
