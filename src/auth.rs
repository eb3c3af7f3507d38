//! Client authentication: JWT verification and the tenant id it yields.

pub mod jwt;
pub mod tenant;
