//! The PostgreSQL wire protocol, version 3.0: framing, startup packets and the
//! few messages the proxy builds or inspects. Pure code: no sockets, no tokio,
//! so every parser here can be unit-tested and fuzzed on its own.

pub mod build;
pub mod error;
pub mod frame;
pub mod row;
pub mod startup;
