//! Client authentication: JWT verification (one key, or a JWKS fetched and kept fresh) and the tenant id it yields.

pub mod fetch;
pub mod jwks;
pub mod jwt;
pub mod keystore;
pub mod signing;
pub mod tenant;
