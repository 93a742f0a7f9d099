//! pgwarden: a SQL-aware PostgreSQL proxy. See DESIGN.md for the architecture.

pub mod admin;
pub mod backend;
pub mod cache;
pub mod cli;
pub mod config;
pub mod consistency;
pub mod engine;
pub mod frontend;
pub mod protocol;
pub mod proxy;
pub mod router;
pub mod sandbox;
pub mod session;
pub mod state;
pub mod topology;

pub use proxy::Proxy;
