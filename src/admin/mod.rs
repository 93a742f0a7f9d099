//! Operator surfaces: the per-proxy counters behind /metrics, and the HTTP endpoint
//! for /metrics and /healthz.

pub mod counters;
pub mod http;
