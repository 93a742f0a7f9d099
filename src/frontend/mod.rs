//! Client side only: the listener, TLS and startup negotiation, client authentication,
//! cancel requests and startup options. A client that logged in is handed to the engine.

pub mod auth;
pub mod cancel;
pub mod listener;
pub(crate) mod options;
pub mod scram;
pub mod startup;
pub mod tls;
