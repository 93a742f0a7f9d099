//! The statements the proxy keeps on server connections for clients: their names, how
//! a request run as one differs from what the client sent, and the one rule for an
//! error such a request meets before its statement bound. A leaf: the pipeline,
//! auto_prepare, statement renaming and the lanes all use it.

use crate::protocol::views;
use crate::router::parameterize::Parameterized;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

/// A server statement name, `pgw_q` and 16 hex digits, without allocating.
#[derive(Clone, Copy)]
pub(crate) struct Name([u8; 21]);

impl Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

pub(crate) fn name(id: u64) -> Name {
    let mut b = *b"pgw_q0000000000000000";
    for (i, d) in b[5..].iter_mut().enumerate() {
        let nibble = (id >> (60 - 4 * i)) & 0xf;
        *d = b"0123456789abcdef"[nibble as usize];
    }
    Name(b)
}

pub(crate) fn id_of(p: &Parameterized) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    p.sql.hash(&mut h);
    p.types.hash(&mut h);
    h.finish()
}

/// How the request the server runs differs from what the client sent (on a lane, or
/// renamed by the exchange).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// As sent (statement names aside).
    AsSent,
    /// A simple Query run as Bind/Describe/Execute of a prepared statement: BindComplete
    /// and NoData are not the client's, and an error before it runs (the statement went
    /// stale) sends the Query back to its session to run as sent.
    Lifted,
    /// An unnamed Parse run as a named statement the connection keeps: the client gets
    /// its ParseComplete, and an error before the Bind completes sends the request back
    /// to its session to run as sent.
    Renamed,
}

impl Shape {
    /// An error before BindComplete may be the lane's doing, not the client's.
    pub(crate) fn may_fall_back(self) -> bool {
        self != Shape::AsSent
    }
}

/// Whether an error the server sent for a request the proxy ran in another form (a
/// kept statement for a simple Query, a renamed unnamed statement) is the proxy's to
/// handle: it came before the statement bound, so nothing of the client's ran, and it
/// is about the statement. The request then runs again as sent, and the client never
/// sees the error. One rule for the exchange's pipeline and the shared read lanes.
pub(crate) fn early_error_falls_back(bound: bool, error_body: &[u8]) -> bool {
    !bound && may_fall_back(&views::error_fields(error_body).0)
}

/// Errors after which the client's Query is run as sent instead: those that are about
/// the statement. Not a cancel, a shutdown or a broken connection (57, 08), nor a lack
/// of resources or a system error (53, 58, XX): those the client must see.
pub(crate) fn may_fall_back(code: &str) -> bool {
    !["57", "08", "53", "58", "XX"]
        .iter()
        .any(|c| code.starts_with(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_fixed_width_hex() {
        assert_eq!(&*name(0xab), "pgw_q00000000000000ab");
        assert_eq!(&*name(u64::MAX), "pgw_qffffffffffffffff");
    }

    #[test]
    fn falls_back_only_on_errors_about_the_statement() {
        assert!(may_fall_back("0A000") && may_fall_back("42703") && may_fall_back("26000"));
        assert!(!may_fall_back("57014") && !may_fall_back("08006") && !may_fall_back("XX000"));
        let stale = b"SERROR\0C0A000\0Mcached plan must not change result type\0\0";
        assert!(early_error_falls_back(false, stale));
        assert!(
            !early_error_falls_back(true, stale),
            "after the bind the client's own"
        );
        assert!(!early_error_falls_back(
            false,
            b"SFATAL\0C57P01\0Mterminating\0\0"
        ));
    }
}
