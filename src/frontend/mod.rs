//! Client side: listener, TLS and startup negotiation, client authentication, cancel
//! requests, and the per-client session that relays requests to pooled servers.

pub mod auth;
pub mod cancel;
pub mod listener;
pub mod pipeline;
mod relay;
pub mod scram;
pub mod session;
pub mod startup;
pub mod statements;
pub mod tls;
