//! Commit positions: after a transaction that wrote commits, a WAL position that covers
//! it is recorded for the session (read-your-writes) and for each table written (the
//! table clock), and published to the fleet. A held server (session mode, pinned
//! client, fleet hold) is asked itself; in transaction mode the pool's sampler answers
//! in the background, one query for every commit waiting.

use super::exchange::Committed;
use super::{Engine, Server};
use crate::config::LagSource;
use crate::consistency::bus::TableWrite;
use crate::consistency::lsn;
use crate::consistency::reach::load::COMMIT_WAIT;
use crate::consistency::OPAQUE;
use crate::session::clock::{now_ms, InFlight};
use crate::state::Shared;
use std::sync::Arc;
use std::time::Duration;

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
pub(crate) struct PendingCommit {
    tables: Vec<String>,
    /// Its record may not be flushed yet (see INSERTED_SQL).
    may_be_unflushed: bool,
    in_flight: Option<InFlight>,
}

/// What a capture needs once the session has moved on.
pub(crate) struct CaptureTarget {
    shared: Arc<Shared>,
    database: String,
}

impl Engine {
    /// The server acknowledged a commit that wrote: until its position is known, no
    /// replica is safe for the tables it could have changed, nor for this session's
    /// reads of them (of any table, when those cannot be told).
    pub(crate) fn commit_acknowledged(
        &mut self,
        c: Committed,
        reached: Option<Vec<String>>,
        pending: &mut Option<PendingCommit>,
    ) {
        let mut tables = match &reached {
            Some(r) => r.clone(),
            None => c.tables,
        };
        // Strict reads of any table need what cannot be told (a commit that changed the
        // catalog is opaque and keeps CATALOG among its tables).
        if reached.is_none() && !tables.iter().any(|t| t == OPAQUE) {
            tables.push(OPAQUE.to_string());
        }
        self.shared.table_clock.begin_commit(
            &self.session.database,
            tables.iter().map(String::as_str),
            PENDING_TTL,
        );
        let clock = &self.session.clock;
        match pending {
            Some(p) => {
                if let Some(f) = &mut p.in_flight {
                    f.widen(reached.as_deref());
                }
            }
            None => {
                *pending = Some(PendingCommit {
                    in_flight: Some(InFlight::new(clock.clone(), reached.as_deref())),
                    ..Default::default()
                })
            }
        }
        let p = pending.as_mut().expect("just set");
        p.tables.extend(tables);
        p.may_be_unflushed |= c.may_be_unflushed;
    }

    /// The tables a commit could have changed (lower-cased, with the triggers', cascades'
    /// and views' of the catalog model), or None when that cannot be told: it wrote what
    /// the proxy cannot name, or no current model of the catalog comes in time.
    pub(crate) async fn reached(&self, c: &Committed) -> Option<Vec<String>> {
        if c.opaque {
            return None;
        }
        let shared = &self.shared;
        let (db, clock, pool) = (&self.session.database, &shared.table_clock, &self.pool.pool);
        let loaded = match shared.reach.current(db, clock, pool) {
            Some(l) => l,
            // The first write of a database, or the first after DDL: rare, boxed.
            None => Box::pin(shared.reach.current_waiting(db, clock, pool, COMMIT_WAIT)).await?,
        };
        let calls = c.calls.iter().map(String::as_str);
        loaded
            .reach
            .writes(c.tables.iter().map(String::as_str), calls)
    }

    /// Reads the commit position on `server` and records it, before anything else runs
    /// on this connection.
    pub(crate) async fn capture_commit(
        &mut self,
        server: &mut Server,
        pending: PendingCommit,
        hold: bool,
    ) {
        self.capture_target().capture(server, pending, hold).await;
    }

    /// Gives the idle server back at once and has the position read by the pool's
    /// sampler (one query serves all commits waiting for it): the session goes on with
    /// its next request meanwhile.
    pub(crate) fn capture_detached(&mut self, server: Server, pending: PendingCommit) {
        self.let_go(server);
        let target = self.capture_target();
        if target.shared.config().consistency.lag_source == LagSource::Aurora {
            target.record_detached(pending, Some(now_ms()));
            return;
        }
        // A session that set synchronous_commit itself: the sampler's connection does
        // not see that setting, so only the insert position is sure to cover it.
        let session_async = self
            .session
            .params
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("synchronous_commit"));
        self.pool.positions.after_now(
            &self.pool.pool,
            Box::new(move |read| {
                let position = read.map(|p| {
                    let recorded = if pending.may_be_unflushed || session_async || p.sync_off {
                        p.insert
                    } else {
                        p.flush
                    };
                    target.shared.flushes.saw(p.flush, recorded);
                    recorded
                });
                target.record_detached(pending, position);
            }),
        );
    }

    fn capture_target(&self) -> CaptureTarget {
        CaptureTarget {
            shared: self.shared.clone(),
            database: self.session.database.clone(),
        }
    }
}

impl CaptureTarget {
    /// Reads the position on the connection that committed, before anything else runs
    /// on it.
    async fn capture(&self, server: &mut Server, pending: PendingCommit, hold: bool) {
        let (name, sql) = if pending.may_be_unflushed {
            ("pgw_i_inserted", INSERTED_SQL)
        } else {
            ("pgw_i_flushed", FLUSHED_SQL)
        };
        let position = match self.shared.config().consistency.lag_source {
            LagSource::Postgres => match server.query_row_prepared(name, sql).await {
                Ok(row) => row.first().and_then(|v| lsn::parse(v.as_deref()?)),
                Err(e) => {
                    tracing::warn!(node = %server.node, error = %e, "cannot read the commit position");
                    None
                }
            },
            // Aurora positions are times: a replica is safe once it is past this moment.
            LagSource::Aurora => Some(now_ms()),
        };
        self.record(pending, position, hold).await;
    }

    async fn record(&self, pending: PendingCommit, position: Option<u64>, hold: bool) {
        let Some((tables, pos)) = self.settle(pending, position) else {
            return;
        };
        if hold {
            self.publish_and_wait(tables, pos).await;
        } else {
            self.publish(tables, pos);
        }
    }

    /// As `record`, for a session that has moved on: nothing to hold its reply for.
    fn record_detached(&self, pending: PendingCommit, position: Option<u64>) {
        if let Some((tables, pos)) = self.settle(pending, position) {
            self.publish(tables, pos);
        }
    }

    /// Moves the table clock and the session's position; the tables and position to
    /// publish, if one is known.
    fn settle(&self, pending: PendingCommit, position: Option<u64>) -> Option<(Vec<String>, u64)> {
        let PendingCommit {
            tables,
            mut in_flight,
            ..
        } = pending;
        // Without a position the tables stay pending until the marker lapses, and the
        // session's reads go to the primary for a while (InFlight's drop).
        let pos = position?;
        let clock = &self.shared.table_clock;
        let names = || tables.iter().map(String::as_str);
        clock.settle(&self.database, names(), pos);
        if let Some(f) = &mut in_flight {
            f.settle(pos);
        }
        drop(in_flight);
        metrics::counter!("pgwarden_commit_positions_total").increment(1);
        Some((tables, pos))
    }

    fn table_write(&self, tables: Vec<String>, lsn: u64) -> TableWrite {
        TableWrite {
            db: self.database.clone(),
            tables,
            lsn,
        }
    }

    /// Tells the fleet, without waiting.
    fn publish(&self, tables: Vec<String>, lsn: u64) {
        if let Some(bus) = &self.shared.bus {
            bus.publish(self.table_write(tables, lsn));
        }
    }

    /// Tells the fleet and waits (bounded) until Redis has it, so another proxy cannot
    /// serve a stale read of it once the client has its reply.
    async fn publish_and_wait(&self, tables: Vec<String>, lsn: u64) {
        let Some(bus) = &self.shared.bus else { return };
        let wait = Duration::from_millis(self.shared.config().consistency.fleet_publish_wait_ms);
        if let Err(e) = bus
            .publish_and_wait(self.table_write(tables, lsn), wait)
            .await
        {
            tracing::debug!(error = %e, "commit position not confirmed by the fleet bus");
        }
    }
}
