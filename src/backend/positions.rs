//! Reads the primary's WAL positions for many commits at once: one query serves every
//! commit acknowledged before it started, so under load commits share a round trip
//! instead of paying one each.

use super::pool::ServerPool;
use deadpool::managed::Object;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

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

#[derive(Default)]
pub struct PositionSampler {
    // Held only to add or take waiters, never across an await.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    running: bool,
    waiting: Vec<oneshot::Sender<Option<Positions>>>,
}

impl PositionSampler {
    /// Positions read by a query that starts after this call; None when the primary
    /// cannot be asked.
    pub async fn after_now(self: &Arc<Self>, pool: &ServerPool) -> Option<Positions> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut s = self.state.lock().expect("sampler lock");
            s.waiting.push(tx);
            !std::mem::replace(&mut s.running, true)
        };
        if start {
            tokio::spawn(self.clone().run(pool.clone()));
        }
        rx.await.ok().flatten()
    }

    /// Reads positions while anyone waits; each read answers those who were waiting
    /// when it started.
    async fn run(self: Arc<Self>, pool: ServerPool) {
        loop {
            let batch = {
                let mut s = self.state.lock().expect("sampler lock");
                if s.waiting.is_empty() {
                    s.running = false;
                    return;
                }
                std::mem::take(&mut s.waiting)
            };
            let read = sample(&pool).await;
            for tx in batch {
                let _ = tx.send(read);
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
