//! Server side: one authenticated server connection, and the deadpool pools that hold them.

pub mod auth;
pub mod conn;
pub mod pool;
pub mod positions;
pub mod prepared;
pub mod socket;
pub mod tls;

pub use conn::{BackendError, ConnectSpec, ServerConn};
pub use pool::{PoolKey, Pools, ServerPool};
pub use socket::ServerAddr;
