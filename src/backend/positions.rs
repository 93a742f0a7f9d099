//! Reads the primary's WAL positions for many commits at once: one query serves every
//! commit acknowledged before it started, so under load commits share a round trip
//! instead of paying one each, and reads start at most once per interval.

use super::pool::ServerPool;
use deadpool::managed::Object;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The primary's positions, read after the commits waiting for them were acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Positions {
    /// Covers every commit flushed at its acknowledgement (synchronous_commit not off).
    pub flush: u64,
    /// Covers every acknowledged commit, flushed or not.
    pub insert: u64,
    /// synchronous_commit is off for this database and role (server, database or role
    /// setting): only `insert` covers their commits.
    pub sync_off: bool,
}

const SQL: &str = "SELECT pg_current_wal_flush_lsn()::text, pg_current_wal_insert_lsn()::text, \
                   current_setting('synchronous_commit')";

pub struct PositionSampler {
    // Held only to add or take waiters, never across an await.
    state: Mutex<State>,
    /// Least time between the starts of two reads. Without it, a read that finds one
    /// commit waiting serves only that one: at 8 clients writing, nearly every commit
    /// paid a query of its own on the primary.
    min_interval: Duration,
    reads: AtomicU64,
}

/// What a commit does with the positions read after it (None: the primary could not
/// be asked). Called on the sampler's task: it must not block.
pub type Waiter = Box<dyn FnOnce(Option<Positions>) + Send>;

#[derive(Default)]
struct State {
    running: bool,
    waiting: Vec<Waiter>,
}

impl PositionSampler {
    pub fn new(min_interval: Duration) -> Self {
        PositionSampler {
            state: Mutex::default(),
            min_interval,
            reads: AtomicU64::new(0),
        }
    }

    /// Reads started so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Has `then` called with the positions read by a query that starts after this
    /// call. A callback, not a future: a commit then costs no task of its own.
    pub fn after_now(self: &Arc<Self>, pool: &ServerPool, then: Waiter) {
        let start = {
            let mut s = self.state.lock().expect("sampler lock");
            s.waiting.push(then);
            !std::mem::replace(&mut s.running, true)
        };
        if start {
            tokio::spawn(self.clone().run(pool.clone()));
        }
    }

    /// Reads positions while anyone waits; each read answers those who were waiting
    /// when it started.
    async fn run(self: Arc<Self>, pool: ServerPool) {
        let mut last_start: Option<Instant> = None;
        loop {
            // Commits acknowledged meanwhile join this read rather than start their own.
            // A read that took the whole interval is followed at once, with no timer.
            if let Some(next) = last_start.map(|at| at + self.min_interval) {
                if next > Instant::now() {
                    tokio::time::sleep_until(next).await;
                }
            }
            let batch = {
                let mut s = self.state.lock().expect("sampler lock");
                if s.waiting.is_empty() {
                    s.running = false;
                    return;
                }
                std::mem::take(&mut s.waiting)
            };
            last_start = Some(Instant::now());
            self.reads.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("pgwarden_commit_position_reads_total").increment(1);
            let read = sample(&pool).await;
            for then in batch {
                then(read);
            }
        }
    }
}

async fn sample(pool: &ServerPool) -> Option<Positions> {
    let mut conn = match pool.get().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "no primary connection to read commit positions");
            return None;
        }
    };
    let row = conn.query_row_prepared("pgw_i_positions", SQL).await;
    if conn.broken {
        let _ = Object::take(conn);
    }
    let row = match row {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read commit positions");
            return None;
        }
    };
    let lsn = |i: usize| {
        row.get(i)
            .and_then(|v| crate::consistency::lsn::parse(v.as_deref()?))
    };
    Some(Positions {
        flush: lsn(0)?,
        insert: lsn(1)?,
        sync_off: row.get(2).and_then(|v| v.as_deref()) == Some("off"),
    })
}
