//! No stale reads: WAL positions (LSNs), the per-table clock of last commit positions,
//! and the fleet bus that shares that clock between proxies through Redis.

pub mod bus;
pub mod clock;
pub mod flush;
pub mod lsn;
pub mod need;
pub mod reach;
pub mod wait;

pub use clock::{TableClock, CATALOG, OPAQUE};
pub use need::{need, LagBudget, ReadNeed};
