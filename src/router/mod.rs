//! SQL-aware routing: analysis of statements (sqlparser), a parse cache keyed by
//! fingerprint, and the pure routing function that turns them into a Plan.

pub mod analysis;
pub mod fingerprint;
pub mod parameterize;
pub mod parse_cache;
pub mod plan;
pub mod text;
