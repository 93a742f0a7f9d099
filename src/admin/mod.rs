//! Operator surfaces: the HTTP endpoint for /metrics and /healthz.

pub mod http;
