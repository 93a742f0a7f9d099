//! Where a request's steps meet: a complete client request is answered locally, planned,
//! given a server (checkout, waits for a replica, retries), exchanged with that server
//! and followed up (commit capture), one client at a time.

mod checkout;
mod commit;
pub mod exchange;
pub mod lanes;
mod plan;
mod relay;
mod serve;

pub use checkout::run;
