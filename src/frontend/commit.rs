//! Commit positions: after a transaction that wrote commits, its WAL position is read on
//! the same server connection and recorded for the session (read-your-writes) and for
//! each table written (the table clock), and published to the fleet.

use super::session::{Server, Session};
use crate::config::LagSource;
use crate::consistency::bus::TableWrite;
use crate::consistency::lsn;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long tables stay unreadable on replicas should a commit position never arrive.
const PENDING_TTL: Duration = Duration::from_secs(5);

/// Where the commit record ends at the latest. With synchronous_commit on (or local,
/// remote_write, remote_apply) it was flushed before the client's reply, so the flush
/// position covers it, and replicas can reach that position at once. With it off the
/// record may still be in WAL buffers: only the insert position is sure to cover it,
/// and replicas reach that only after the next flush (other commits, or the WAL writer
/// within wal_writer_delay).
const FLUSHED_SQL: &str = "SELECT (CASE WHEN current_setting('synchronous_commit') = 'off' \
     THEN pg_current_wal_insert_lsn() ELSE pg_current_wal_flush_lsn() END)::text";
/// For a transaction that may have turned synchronous_commit off for itself (SET
/// LOCAL, set_config): the session's setting no longer tells.
const INSERTED_SQL: &str = "SELECT pg_current_wal_insert_lsn()::text";

/// A commit acknowledged to the client whose position is still to be read.
#[derive(Default)]
pub(super) struct PendingCommit {
    pub tables: Vec<String>,
    /// Its record may not be flushed yet (see INSERTED_SQL).
    pub may_be_unflushed: bool,
}

impl Session {
    /// The server acknowledged a commit that wrote: until its position is known, no
    /// replica is safe for its tables.
    pub(super) fn commit_acknowledged(
        &mut self,
        tables: Vec<String>,
        may_be_unflushed: bool,
        pending: &mut Option<PendingCommit>,
    ) {
        self.shared.table_clock.begin_commit(
            &self.database,
            tables.iter().map(String::as_str),
            PENDING_TTL,
        );
        let p = pending.get_or_insert_with(PendingCommit::default);
        p.tables.extend(tables);
        p.may_be_unflushed |= may_be_unflushed;
    }

    /// Reads the commit position and records it.
    pub(super) async fn capture_commit(
        &mut self,
        server: &mut Server,
        pending: PendingCommit,
        hold: bool,
    ) {
        let PendingCommit {
            tables,
            may_be_unflushed,
        } = pending;
        let sql = if may_be_unflushed {
            INSERTED_SQL
        } else {
            FLUSHED_SQL
        };
        let position = match self.shared.config.consistency.lag_source {
            LagSource::Postgres => match server.query_row(sql).await {
                Ok(row) => row.first().and_then(|v| lsn::parse(v.as_deref()?)),
                Err(e) => {
                    tracing::warn!(node = %server.node, error = %e, "cannot read the commit position");
                    None
                }
            },
            // Aurora positions are times: a replica is safe once it is past this moment.
            LagSource::Aurora => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .ok()
                .map(|d| d.as_millis() as u64),
        };
        let clock = &self.shared.table_clock;
        let names = || tables.iter().map(String::as_str);
        match position {
            Some(pos) => {
                self.last_commit = self.last_commit.max(pos);
                clock.advance(&self.database, names(), pos);
                clock.end_commit(&self.database, names());
                metrics::counter!("pgwarden_commit_positions_total").increment(1);
                self.publish_commit(&tables, pos, hold).await;
            }
            None => {
                // The tables stay pending until the marker lapses; this session reads
                // from the primary until then.
                self.last_commit = crate::consistency::clock::UNREACHABLE;
                self.unknown_commit_since = Some(std::time::Instant::now());
            }
        }
    }

    /// Tells the fleet. With `hold`, waits (bounded) until Redis has it, so another
    /// proxy cannot serve a stale read of it once the client has its reply.
    async fn publish_commit(&self, tables: &[String], lsn: u64, hold: bool) {
        let Some(bus) = &self.shared.bus else { return };
        let w = TableWrite {
            db: self.database.clone(),
            tables: tables.to_vec(),
            lsn,
        };
        if hold {
            let wait = Duration::from_millis(self.shared.config.consistency.fleet_publish_wait_ms);
            if let Err(e) = bus.publish_and_wait(w, wait).await {
                tracing::debug!(error = %e, "commit position not confirmed by the fleet bus");
            }
        } else {
            bus.publish(w);
        }
    }
}
