//! The fleet bus: shares the table clock between the proxies of a fleet through Redis, so a
//! write through one proxy makes every other proxy route and cache reads of its tables safely.
//! This file is its public face; `link` connects to Redis, `publisher`, `subscriber` and
//! `reader` are its three tasks, and `wire` is the message format.

pub(crate) mod link;
mod publisher;
mod reader;
mod subscriber;
mod wire;

use crate::consistency::{lsn, TableClock};
use anyhow::{anyhow, bail, Context as _, Result};
use link::{LinkLabels, RedisLink, Stop};
use publisher::{Dropped, Job, Publisher, QUEUE_CAPACITY};
use reader::Reader;
use redis::aio::MultiplexedConnection;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use subscriber::Subscriber;
use tokio::sync::{mpsc, oneshot, watch};

// The bus's three connections, as numbered in its RedisLink.
const PUBLISHER: usize = 0;
const SUBSCRIBER: usize = 1;
const READER: usize = 2;
const CONNECTIONS: usize = 3;
/// How long a read waits for the stored clock before it goes without it.
const CATCH_UP_TIMEOUT: Duration = Duration::from_millis(200);

/// How the link's log lines and gauge name the bus.
fn labels() -> LinkLabels {
    LinkLabels {
        name: "fleet bus",
        fallback: "routing with this proxy's table clock meanwhile",
        gauge: metrics::gauge!("pgwarden_bus_connected"),
    }
}

/// One committed write: the tables it touched and the commit position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableWrite {
    pub db: String,
    pub tables: Vec<String>,
    pub lsn: u64,
}

/// Handle to the three background tasks of one proxy. Dropping the last handle stops them.
///
/// Each write is stored in a hash `<prefix>:clock:<db>` (field = lowercased table, value =
/// LSN as "X/Y", only ever moved forward) and published on `<prefix>:writes`, in one atomic
/// script. The subscriber applies messages to the local clock and, on every (re)connect,
/// first loads the stored hashes, so a proxy that starts late or missed messages catches up.
/// A read that must not miss another proxy's acknowledged write reads the stored hash
/// first ([`FleetBus::catch_up`]): its message may still be on its way.
///
/// Redis is an accelerator, never a dependency: while it is unreachable the proxy routes
/// with its own clock, writes it cannot publish are dropped and counted, and both tasks
/// retry with backoff.
pub struct FleetBus {
    queue: mpsc::Sender<Job>,
    /// None when the URL was invalid: no tasks run and the bus stays disconnected.
    link: Option<Arc<RedisLink>>,
    /// The reader's connection, while it has one.
    reader: watch::Receiver<Option<MultiplexedConnection>>,
    clock_prefix: String,
    clock: Arc<TableClock>,
    dropped: Arc<Dropped>,
    proxy_id: String,
    // Never sent on: its drop tells the subscriber that the bus is gone.
    _alive: oneshot::Sender<()>,
}

impl FleetBus {
    /// Connects in the background (never fails at start: an unreachable Redis just means
    /// "not connected yet") and spawns the publisher and subscriber tasks, each with its
    /// own connection. `prefix` namespaces channel and keys (e.g. "pgwarden"). Must be
    /// called inside a tokio runtime. An invalid URL is logged and leaves the bus
    /// disconnected for good; validate it beforehand with [`check_url`].
    pub fn start(
        url: &str,
        prefix: &str,
        clock: Arc<TableClock>,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<FleetBus> {
        let (queue, jobs) = mpsc::channel(QUEUE_CAPACITY);
        let (alive, gone) = oneshot::channel();
        let proxy_id = format!("{:016x}", rand::random::<u64>());
        let dropped = Arc::new(Dropped::default());
        let names = Arc::new(Names::new(prefix));
        let (reader_tx, reader) = watch::channel(None);
        let link = match RedisLink::open(url, labels(), CONNECTIONS) {
            Ok(link) => {
                let link = Arc::new(link);
                let publisher = Publisher {
                    link: link.clone(),
                    names: names.clone(),
                    proxy_id: proxy_id.clone(),
                    dropped: dropped.clone(),
                };
                let stop = Stop::new(shutdown.clone(), None);
                tokio::spawn(publisher.run(jobs, stop));
                let subscriber = Subscriber {
                    link: link.clone(),
                    names: names.clone(),
                    proxy_id: proxy_id.clone(),
                    clock: clock.clone(),
                };
                tokio::spawn(subscriber.run(Stop::new(shutdown.clone(), Some(gone))));
                let reader = Reader {
                    link: link.clone(),
                    conn: reader_tx,
                };
                tokio::spawn(reader.run(Stop::new(shutdown, None)));
                Some(link)
            }
            Err(e) => {
                tracing::error!("fleet bus disabled: {e:#}");
                None
            }
        };
        Arc::new(FleetBus {
            queue,
            link,
            reader,
            clock_prefix: names.clock_prefix.clone(),
            clock,
            dropped,
            proxy_id,
            _alive: alive,
        })
    }

    /// Non-blocking: queues the write for publication. When the queue is full or Redis is
    /// not connected the write is dropped and counted; the local clock already has it.
    pub fn publish(&self, w: TableWrite) {
        if w.tables.is_empty() || is_sentinel(w.lsn) {
            return;
        }
        if !self.publisher_up() {
            self.dropped.count(1);
            return;
        }
        if self.queue.try_send(Job::new(w, None)).is_err() {
            self.dropped.count(1);
        }
    }

    /// Publishes and waits, at most `timeout`, until Redis acknowledged both the stored
    /// clock update and the PUBLISH. Errs at once when the publisher is not connected.
    pub async fn publish_and_wait(&self, w: TableWrite, timeout: Duration) -> Result<()> {
        if w.tables.is_empty() {
            return Ok(());
        }
        if is_sentinel(w.lsn) {
            bail!("fleet bus: {:#x} is not a WAL position", w.lsn);
        }
        if !self.publisher_up() {
            self.dropped.count(1);
            bail!("fleet bus is not connected to Redis");
        }
        let (ack, acked) = oneshot::channel();
        let send_and_wait = async {
            self.queue
                .send(Job::new(w, Some(ack)))
                .await
                .map_err(|_| anyhow!("fleet bus is stopped"))?;
            match acked.await {
                Ok(result) => result.map_err(|e| anyhow!("fleet bus write dropped: {e}")),
                Err(_) => bail!("fleet bus write dropped: the bus stopped"),
            }
        };
        tokio::time::timeout(timeout, send_and_wait)
            .await
            .map_err(|_| anyhow!("fleet bus: Redis did not acknowledge within {timeout:?}"))?
    }

    /// Brings the local clock of `tables` of `db` (lower-cased; None: all of them) up to
    /// the fleet's stored clock, so a read planned after it sees every write another
    /// proxy acknowledged before it began. Returns whether any table moved; errs when
    /// Redis does not answer (in time), and the read must then do without.
    pub async fn catch_up(&self, db: &str, tables: Option<&[&str]>) -> Result<bool> {
        let conn = self.reader.borrow().clone();
        let Some(mut conn) = conn else {
            bail!("fleet bus is not connected to Redis");
        };
        let key = format!("{}{db}", self.clock_prefix);
        let read = async {
            match tables {
                Some(tables) => {
                    let values: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
                        .arg(&key)
                        .arg(tables)
                        .query_async(&mut conn)
                        .await?;
                    let known = tables.iter().zip(values).filter_map(|(t, v)| {
                        let lsn = lsn::parse(std::str::from_utf8(&v?).ok()?)?;
                        Some((*t, lsn))
                    });
                    Ok::<_, redis::RedisError>(self.clock.catch_up(db, known))
                }
                None => {
                    // As bytes: one odd field must not fail the read.
                    let fields: HashMap<Vec<u8>, Vec<u8>> = redis::cmd("HGETALL")
                        .arg(&key)
                        .query_async(&mut conn)
                        .await?;
                    let known = fields.iter().filter_map(|(t, v)| {
                        let lsn = lsn::parse(std::str::from_utf8(v).ok()?)?;
                        Some((std::str::from_utf8(t).ok()?, lsn))
                    });
                    Ok(self.clock.catch_up(db, known))
                }
            }
        };
        tokio::time::timeout(CATCH_UP_TIMEOUT, read)
            .await
            .map_err(|_| anyhow!("Redis did not answer within {CATCH_UP_TIMEOUT:?}"))?
            .context("reading the fleet's stored clock")
    }

    /// Every connection (publishing, subscribed, reading) is up.
    pub fn is_connected(&self) -> bool {
        self.link.as_ref().is_some_and(|l| l.all_up())
    }

    /// While connected, a number that changes on every reconnect: what this proxy's cache
    /// has filled is good only within one (`cache::Cache::get`).
    pub fn period(&self) -> Option<u64> {
        self.link.as_ref().and_then(|l| l.period())
    }

    /// Writes not published because Redis was unreachable or the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// Random per-bus id carried in every message, so a proxy skips its own echoes.
    pub fn proxy_id(&self) -> &str {
        &self.proxy_id
    }

    fn publisher_up(&self) -> bool {
        self.link.as_ref().is_some_and(|l| l.is_up(PUBLISHER))
    }
}

/// u64::MAX is the table clock's "only the primary is safe" marker, not a WAL position.
/// Stored with max semantics it could never be undone and would pin the tables to the
/// primary fleet-wide, so it is never published.
fn is_sentinel(lsn: u64) -> bool {
    lsn == u64::MAX
}

/// Checks that `url` is a Redis URL the bus can use, for config validation.
pub fn check_url(url: &str) -> Result<()> {
    link::check_url(url)
}

/// Channel and key names under one prefix.
struct Names {
    channel: String,
    clock_prefix: String,
    scan_pattern: String,
}

impl Names {
    fn new(prefix: &str) -> Names {
        Names {
            channel: format!("{prefix}:writes"),
            clock_prefix: format!("{prefix}:clock:"),
            scan_pattern: format!("{}:clock:*", glob_escape(prefix)),
        }
    }
}

/// A prefix is a literal, but SCAN MATCH reads it as a glob.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_pattern_escapes_glob_characters() {
        let n = Names::new("a*b?[c]\\");
        assert_eq!(n.scan_pattern, "a\\*b\\?\\[c\\]\\\\:clock:*");
        assert_eq!(n.clock_prefix, "a*b?[c]\\:clock:");
        assert_eq!(n.channel, "a*b?[c]\\:writes");
    }

    #[test]
    fn urls_are_checked_without_connecting() {
        assert!(check_url("redis://127.0.0.1:1/").is_ok());
        assert!(check_url("not a url").is_err());
    }
}
