//! The exchange with one server connection, without I/O: what the server still owes the
//! client (pipeline), statement renaming for transaction pooling (statements) and
//! running simple Queries as statements the server keeps (auto_prepare).

pub(crate) mod auto_prepare;
pub mod pipeline;
pub mod statements;
