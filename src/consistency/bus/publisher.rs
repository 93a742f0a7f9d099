//! The publisher task: takes writes off the bus's queue and sends them to Redis in
//! batches, each write stored in its database's clock hash and published in one script.

use super::link::{is_disconnect, ping_interval, Backoff, RedisLink, Stop};
use super::{wire, Names, TableWrite, PUBLISHER};
use crate::consistency::lsn;
use anyhow::{bail, Result};
use redis::aio::MultiplexedConnection;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio::time::sleep;

/// Writes waiting for the publisher. Beyond this the bus sheds load instead of the proxy.
pub(super) const QUEUE_CAPACITY: usize = 4096;
/// Writes sent to Redis in one pipeline: one round trip for many commits.
const BATCH: usize = 256;

/// KEYS[1]: the clock hash of one database. ARGV: channel, message, LSN ("X/Y"), tables...
/// Store and publish happen in one atomic step, so one reply acknowledges both. LSNs are
/// compared as two 32-bit halves because Lua numbers are doubles (exact only to 2^53).
const STORE_AND_PUBLISH: &str = r#"
local function parts(v)
  if not v then return nil end
  local hi, lo = string.match(v, '^(%x+)/(%x+)$')
  if not hi then return nil end
  return tonumber(hi, 16), tonumber(lo, 16)
end
local nhi, nlo = parts(ARGV[3])
if not nhi then return redis.error_reply('pgwarden: bad lsn') end
local changed = 0
for i = 4, #ARGV do
  local chi, clo = parts(redis.call('HGET', KEYS[1], ARGV[i]))
  if (not chi) or nhi > chi or (nhi == chi and nlo > clo) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[3])
    changed = changed + 1
  end
end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return changed
"#;

/// One queued write, and who waits for its acknowledgement (`publish_and_wait`).
pub(super) struct Job {
    write: TableWrite,
    ack: Option<oneshot::Sender<Result<(), String>>>,
}

impl Job {
    pub(super) fn new(
        mut write: TableWrite,
        ack: Option<oneshot::Sender<Result<(), String>>>,
    ) -> Job {
        // The table clock folds case; doing the same here keeps one hash field per table.
        for t in &mut write.tables {
            t.make_ascii_lowercase();
        }
        Job { write, ack }
    }
}

/// Writes not published (Redis unreachable, queue full, send failed), shared by the
/// handle and the publisher.
#[derive(Default)]
pub(super) struct Dropped(AtomicU64);

impl Dropped {
    pub(super) fn count(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("pgwarden_bus_dropped_total").increment(n);
    }

    pub(super) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Counts the write and tells its waiter, if any, why it was dropped.
    fn drop_job(&self, job: Job, why: &str) {
        self.count(1);
        if let Some(ack) = job.ack {
            let _ = ack.send(Err(why.to_string()));
        }
    }
}

pub(super) struct Publisher {
    pub(super) link: Arc<RedisLink>,
    pub(super) names: Arc<Names>,
    pub(super) proxy_id: String,
    pub(super) dropped: Arc<Dropped>,
}

impl Publisher {
    pub(super) async fn run(self, mut jobs: mpsc::Receiver<Job>, mut stop: Stop) {
        let mut backoff = Backoff::new();
        loop {
            let outcome = tokio::select! {
                _ = stop.wait() => break,
                r = self.session(&mut jobs) => r,
            };
            match outcome {
                Ok(()) => break, // queue closed: the bus was dropped
                Err(e) => {
                    if self.link.down(PUBLISHER, &e) {
                        backoff.reset();
                    }
                }
            }
            // Writes that were queued before the loss was noticed are dropped while waiting.
            let pause = sleep(backoff.next());
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    _ = stop.wait() => return self.link.stopped(PUBLISHER),
                    _ = &mut pause => break,
                    job = jobs.recv() => match job {
                        Some(job) => self.dropped.drop_job(job, "not connected to Redis"),
                        None => return self.link.stopped(PUBLISHER),
                    },
                }
            }
        }
        self.link.stopped(PUBLISHER);
    }

    /// One connection's life. Ok when the queue closed, Err when the connection failed.
    async fn session(&self, jobs: &mut mpsc::Receiver<Job>) -> Result<()> {
        let (push_tx, mut push_rx) = mpsc::unbounded_channel();
        let mut conn = self.link.connect(push_tx).await?;
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(STORE_AND_PUBLISH)
            .query_async(&mut conn)
            .await?;
        self.link.up(PUBLISHER);
        let mut batch = Vec::with_capacity(BATCH);
        let mut ping = ping_interval();
        loop {
            tokio::select! {
                push = push_rx.recv() => if is_disconnect(&push) {
                    bail!("connection closed");
                },
                n = jobs.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        return Ok(());
                    }
                    self.send(&mut conn, &sha, &mut batch).await?;
                    ping.reset();
                }
                _ = ping.tick() => redis::cmd("PING").exec_async(&mut conn).await?,
            }
        }
    }

    /// Sends a batch as one pipeline; on failure every write in it is dropped and counted.
    async fn send(
        &self,
        conn: &mut MultiplexedConnection,
        sha: &str,
        batch: &mut Vec<Job>,
    ) -> Result<()> {
        let mut pipe = redis::pipe();
        for job in batch.iter() {
            let w = &job.write;
            pipe.cmd("EVALSHA")
                .arg(sha)
                .arg(1)
                .arg(format!("{}{}", self.names.clock_prefix, w.db))
                .arg(&self.names.channel)
                .arg(wire::encode(&self.proxy_id, w))
                .arg(lsn::format(w.lsn))
                .arg(&w.tables);
        }
        match pipe.query_async::<Vec<i64>>(conn).await {
            Ok(_) => {
                metrics::counter!("pgwarden_bus_messages_total", "direction" => "out")
                    .increment(batch.len() as u64);
                for job in batch.drain(..) {
                    if let Some(ack) = job.ack {
                        let _ = ack.send(Ok(()));
                    }
                }
                Ok(())
            }
            Err(e) => {
                let why = e.to_string();
                for job in batch.drain(..) {
                    self.dropped.drop_job(job, &why);
                }
                Err(e.into())
            }
        }
    }
}
