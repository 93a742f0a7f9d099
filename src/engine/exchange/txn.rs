//! What the transaction so far (or an autocommit statement) did and how it ended, and
//! whether a ROLLBACK TO SAVEPOINT may undo a session-level SET.

use crate::consistency::CATALOG;
use crate::router::analysis::{Analysis, SetStmt, StatementKind};

/// What the current transaction (or autocommit statement) did and how it ended.
#[derive(Default)]
pub(crate) struct TxnOutcome {
    /// An error ended the implicit transaction, or aborted the block so far.
    pub(crate) failed: bool,
    /// How the last COMMIT or ROLLBACK reported: a block's outcome is its final one
    /// (PostgreSQL answers COMMIT of an aborted block with ROLLBACK, and ROLLBACK TO
    /// SAVEPOINT, which does not end the block, with ROLLBACK too).
    pub(crate) ended: Option<bool>,
    /// A statement that writes ran.
    pub(crate) wrote: bool,
    /// The tables it wrote, where known.
    pub(crate) tables: Vec<String>,
    /// It wrote what the proxy cannot name (a writing function, DO, CALL, EXECUTE, DDL,
    /// SQL it did not understand): the session's every read needs its commit.
    pub(crate) opaque: bool,
    /// The functions its writing statements called (their writes count too).
    pub(crate) calls: Vec<String>,
    /// Its SQL mentions synchronous_commit (e.g. SET LOCAL synchronous_commit = off):
    /// the commit record may not be flushed when the client has its reply.
    pub(crate) may_be_unflushed: bool,
    /// Session-level SETs it ran, kept for the client only if it commits.
    pub(crate) sets: Vec<SetStmt>,
}

impl TxnOutcome {
    /// Notes what a statement about to run writes: its tables, and the catalog clock's
    /// pseudo-table when it may change the catalog or write tables the proxy cannot
    /// name, so every read of the database waits for its commit.
    pub(crate) fn note_write(&mut self, a: &Analysis) {
        if !a.is_write() {
            return;
        }
        self.wrote = true;
        self.tables.extend(a.writes().map(|t| t.name.clone()));
        let catalog = a.changes_catalog();
        if catalog && !self.tables.iter().any(|t| t == CATALOG) {
            self.tables.push(CATALOG.to_string());
        }
        self.opaque |= catalog || a.statements.iter().any(|s| s.writing_function);
        for c in a.calls() {
            if !self.calls.iter().any(|k| k == c) {
                self.calls.push(c.to_string());
            }
        }
    }

    /// Takes in what an answered request of the transaction did.
    pub(crate) fn absorb(&mut self, t: TxnOutcome) {
        self.wrote |= t.wrote;
        self.tables.extend(t.tables);
        self.opaque |= t.opaque;
        for c in t.calls {
            if !self.calls.contains(&c) {
                self.calls.push(c);
            }
        }
        self.may_be_unflushed |= t.may_be_unflushed;
        self.sets.extend(t.sets);
    }

    pub(crate) fn on_command(&mut self, tag: &[u8]) {
        let ended = if tag.starts_with(b"COMMIT\0") {
            true
        } else if tag.starts_with(b"ROLLBACK\0") {
            false
        } else {
            return;
        };
        self.ended = Some(ended);
        self.failed = false;
    }
}

/// Whether a ROLLBACK TO SAVEPOINT may undo a session-level SET, which the proxy keeps
/// for the client from its own reply. Statements are seen in the order they are sent;
/// RELEASE and failed statements are not followed, so it may say yes needlessly, never no
/// wrongly.
#[derive(Default)]
pub(crate) struct SavepointWatch {
    /// A SAVEPOINT was sent on this connection.
    pub(crate) open: bool,
    /// A session-level SET or RESET was sent after it.
    pub(crate) set_under: bool,
}

impl SavepointWatch {
    pub(crate) fn undoes_a_set(&mut self, a: &Analysis) -> bool {
        let mut undoes = false;
        for s in &a.statements {
            match s.kind {
                StatementKind::Savepoint => self.open = true,
                StatementKind::RollbackToSavepoint => undoes |= self.set_under,
                _ if self.open
                    && matches!(
                        s.set,
                        Some(SetStmt::Set { local: false, .. } | SetStmt::Reset { .. })
                    ) =>
                {
                    self.set_under = true
                }
                _ => {}
            }
        }
        undoes
    }
}

#[cfg(test)]
mod tests {
    use super::SavepointWatch;
    use crate::router::analysis::analyze;

    /// Feeds each request to one watch; returns which ones it said may undo a SET.
    fn undoing(requests: &[&str]) -> Vec<bool> {
        let mut w = SavepointWatch::default();
        requests
            .iter()
            .map(|sql| w.undoes_a_set(&analyze(sql, &[])))
            .collect()
    }

    #[test]
    fn only_a_set_under_a_savepoint_can_be_undone() {
        assert_eq!(
            undoing(&["begin; set a.b = 1; savepoint s", "rollback to s; commit"]),
            [false, false]
        );
        assert_eq!(
            undoing(&["begin; savepoint s; set local a.b = 1", "rollback to s"]),
            [false, false]
        );
        assert_eq!(
            undoing(&["begin", "savepoint s", "reset a.b", "rollback to s"]),
            [false, false, false, true]
        );
        assert_eq!(
            undoing(&["savepoint s; set a.b = 1; rollback to savepoint s"]),
            [true]
        );
    }
}
