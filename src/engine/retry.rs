//! When a request may run again elsewhere after its server failed, and what the relay
//! tells its caller about how an exchange ended.

use crate::protocol::views;

/// When a request may run again elsewhere after its server failed.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Retry {
    /// The server answered "shutting down" (57P01-57P03) first: the request never ran.
    pub going_away: bool,
    /// The connection broke before any answer: only safe for reads.
    pub lost: bool,
}

pub(crate) enum Flow {
    /// The server owes nothing and may be released (transaction mode).
    Idle,
    ClientGone,
    /// The server failed before the client saw any answer; run the request elsewhere.
    /// `lost`: its connection broke (rather than the node saying it is going away).
    Retry {
        lost: bool,
    },
}

/// Errors that mean the node is shutting down or restarting, not that the query failed.
pub(crate) fn node_going_away(body: &[u8]) -> bool {
    let (code, _) = views::error_fields(body);
    matches!(code.as_str(), "57P01" | "57P02" | "57P03")
}
