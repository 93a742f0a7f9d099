//! What a read requires of a replica (`ReadNeed`), from the session's consistency mode,
//! its own last commit and the clocks of the tables it reads: a pure function.

use crate::config::{ConsistencyConfig, ConsistencyMode};

/// What a read requires of a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadNeed {
    /// Replayed position the replica must have reached (0: any; UNREACHABLE: none can
    /// be known to, as a commit of what it reads is still being captured).
    pub min_position: u64,
    pub max_lag_bytes: u64,
    pub max_lag_ms: u64,
}

/// The lag budget every read keeps to, whatever its position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagBudget {
    pub max_lag_bytes: u64,
    pub max_lag_ms: u64,
}

impl LagBudget {
    pub fn of(c: &ConsistencyConfig) -> LagBudget {
        LagBudget {
            max_lag_bytes: c.max_lag_bytes,
            max_lag_ms: c.max_lag_ms,
        }
    }

    /// What a read needing `min_position` needs of a replica.
    pub fn with(self, min_position: u64) -> ReadNeed {
        ReadNeed {
            min_position,
            max_lag_bytes: self.max_lag_bytes,
            max_lag_ms: self.max_lag_ms,
        }
    }
}

/// The position a read must find replayed, by mode: nothing (eventual); the session's
/// own last commit and the database's catalog clock (session); those and the last
/// commit of every table it reads (strict). Each is asked only when the mode needs it
/// (the clocks are a map lookup per table): `catalog` is the catalog clock alone,
/// `tables_and_catalog` the tables read with the catalog among them, in one pass.
pub fn min_position(
    mode: ConsistencyMode,
    own: impl FnOnce() -> u64,
    catalog: impl FnOnce() -> u64,
    tables_and_catalog: impl FnOnce() -> u64,
) -> u64 {
    match mode {
        ConsistencyMode::Eventual => 0,
        ConsistencyMode::Session => own().max(catalog()),
        ConsistencyMode::Strict => own().max(tables_and_catalog()),
    }
}

/// What a read needs of a replica: `min_position` within `budget`.
pub fn need(
    mode: ConsistencyMode,
    budget: LagBudget,
    own: impl FnOnce() -> u64,
    catalog: impl FnOnce() -> u64,
    tables_and_catalog: impl FnOnce() -> u64,
) -> ReadNeed {
    budget.with(min_position(mode, own, catalog, tables_and_catalog))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consistency::clock::UNREACHABLE;
    use ConsistencyMode::*;

    const BUDGET: LagBudget = LagBudget {
        max_lag_bytes: 1 << 20,
        max_lag_ms: 500,
    };

    fn never() -> u64 {
        panic!("this mode must not ask")
    }

    #[test]
    fn each_mode_asks_only_what_it_needs() {
        // (mode, own, catalog, tables read with the catalog, min_position)
        let cases: &[(ConsistencyMode, u64, u64, u64, u64)] = &[
            (Session, 0, 0, 0, 0),
            (Session, 42, 0, 0, 42),
            (Session, 42, 0, 99, 42),
            // A schema change elsewhere: every read needs it, in session mode too.
            (Session, 42, 70, 99, 70),
            (Strict, 42, 0, 99, 99),
            (Strict, 99, 0, 42, 99),
            (Strict, 0, 0, 0, 0),
            // A capture under way makes the read unreachable for replicas.
            (Strict, UNREACHABLE, 0, 7, UNREACHABLE),
            (Strict, 7, 0, UNREACHABLE, UNREACHABLE),
            (Session, UNREACHABLE, 0, 0, UNREACHABLE),
            (Session, 7, UNREACHABLE, 0, UNREACHABLE),
        ];
        for &(mode, own, catalog, tables, want) in cases {
            let got = if mode == Session {
                need(mode, BUDGET, || own, || catalog, never)
            } else {
                need(mode, BUDGET, || own, never, || tables)
            };
            assert_eq!(
                got.min_position, want,
                "{mode:?} own {own} catalog {catalog} tables {tables}"
            );
            assert_eq!(
                (got.max_lag_bytes, got.max_lag_ms),
                (BUDGET.max_lag_bytes, BUDGET.max_lag_ms)
            );
        }
        assert_eq!(need(Eventual, BUDGET, never, never, never).min_position, 0);
    }
}
