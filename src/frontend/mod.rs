//! Client side: listener, TLS and startup negotiation, client authentication, cancel
//! requests, and the per-client session that relays requests to pooled servers.

pub mod auth;
mod auto_prepare;
pub mod cancel;
mod commit;
pub mod counters;
mod lane_slow;
mod lane_task;
pub mod lanes;
pub mod listener;
mod options;
pub mod pipeline;
mod relay;
mod routing;
pub mod scram;
mod serve;
pub mod session;
pub mod startup;
pub mod statements;
pub mod tls;
