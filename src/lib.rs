//! pgwarden: a SQL-aware PostgreSQL proxy. See DESIGN.md for the architecture.

pub mod admin;
pub mod backend;
pub mod cli;
pub mod config;
pub mod frontend;
pub mod protocol;
pub mod proxy;
pub mod sandbox;

pub use proxy::Proxy;
