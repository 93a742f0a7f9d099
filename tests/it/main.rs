//! pgwarden's integration tests, one binary with a module per promise: each test starts
//! real PostgreSQL servers (a primary and streaming replicas), redis-server where it needs
//! one, and pgwarden proxies in this process. tests/README.md maps the promises of
//! DESIGN.md §3 to these modules and says how to run one.
//!
//! The metrics test is a binary of its own (tests/metrics.rs): it installs the
//! process-wide metrics recorder.

mod common;

mod auto_prepare;
mod bus;
mod cache;
mod consistency;
mod fleet;
mod frontdoor;
mod harness;
mod multiplex;
mod pgbench;
mod protocol;
mod routing;
