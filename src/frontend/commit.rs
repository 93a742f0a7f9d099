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

/// Insert position, not write position: with synchronous_commit off the commit record
/// may not be written yet, but it is always before the insert position.
const POSITION_SQL: &str = "SELECT pg_current_wal_insert_lsn()::text";

impl Session {
    /// The server acknowledged a commit that wrote: until its position is known, no
    /// replica is safe for its tables.
    pub(super) fn commit_acknowledged(
        &mut self,
        tables: Vec<String>,
        pending: &mut Option<Vec<String>>,
    ) {
        self.shared.table_clock.begin_commit(
            &self.database,
            tables.iter().map(String::as_str),
            PENDING_TTL,
        );
        pending.get_or_insert_with(Vec::new).extend(tables);
    }

    /// Reads the commit position and records it.
    pub(super) async fn capture_commit(
        &mut self,
        server: &mut Server,
        tables: Vec<String>,
        hold: bool,
    ) {
        let position = match self.shared.config.consistency.lag_source {
            LagSource::Postgres => match server.query_row(POSITION_SQL).await {
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
