//! The fleet bus: shares the table clock between the proxies of a fleet through Redis, so a
//! write through one proxy makes every other proxy route and cache reads of its tables safely.

use crate::consistency::{lsn, TableClock};
use anyhow::{anyhow, bail, Context as _, Result};
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value,
};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{interval_at, sleep, Instant, MissedTickBehavior};

/// Writes waiting for the publisher. Beyond this the bus sheds load instead of the proxy.
const QUEUE_CAPACITY: usize = 4096;
/// Writes sent to Redis in one pipeline: one round trip for many commits.
const BATCH: usize = 256;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Generous because the catch-up HGETALL of a large clock may be big; a dead peer is found
/// sooner by the disconnect notice or by the ping.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// An idle connection is pinged this often, so a silently dead one (no RST) is noticed.
const PING_EVERY: Duration = Duration::from_secs(2);
const SCAN_COUNT: usize = 500;
/// First field of every message; a proxy ignores messages of a format it doesn't know.
const FORMAT_VERSION: &str = "1";

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

/// One committed write: the tables it touched and the commit position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableWrite {
    pub db: String,
    pub tables: Vec<String>,
    pub lsn: u64,
}

/// Handle to the two background tasks of one proxy. Dropping the last handle stops them.
///
/// Each write is stored in a hash `<prefix>:clock:<db>` (field = lowercased table, value =
/// LSN as "X/Y", only ever moved forward) and published on `<prefix>:writes`, in one atomic
/// script. The subscriber applies messages to the local clock and, on every (re)connect,
/// first loads the stored hashes, so a proxy that starts late or missed messages catches up.
///
/// Redis is an accelerator, never a dependency: while it is unreachable the proxy routes
/// with its own clock, writes it cannot publish are dropped and counted, and both tasks
/// retry with backoff.
pub struct FleetBus {
    queue: mpsc::Sender<Job>,
    shared: Arc<Shared>,
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
        let client = client_for(url);
        let target = client.as_ref().map(|(_, t)| t.clone()).unwrap_or_default();
        let shared = Arc::new(Shared::new(target));
        match client {
            Ok((client, _)) => {
                let names = Arc::new(Names::new(prefix));
                let publisher = Publisher {
                    client: client.clone(),
                    names: names.clone(),
                    proxy_id: proxy_id.clone(),
                    shared: shared.clone(),
                };
                let stop = Stop::new(shutdown.clone(), None);
                tokio::spawn(publisher.run(jobs, stop));
                let subscriber = Subscriber {
                    client,
                    names,
                    proxy_id: proxy_id.clone(),
                    shared: shared.clone(),
                    clock,
                };
                tokio::spawn(subscriber.run(Stop::new(shutdown, Some(gone))));
            }
            Err(e) => tracing::error!("fleet bus disabled: {e:#}"),
        }
        Arc::new(FleetBus {
            queue,
            shared,
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
        if !self.shared.publisher.load(Ordering::Acquire) {
            self.shared.count_dropped(1);
            return;
        }
        if self.queue.try_send(Job::new(w, None)).is_err() {
            self.shared.count_dropped(1);
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
        if !self.shared.publisher.load(Ordering::Acquire) {
            self.shared.count_dropped(1);
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

    /// Both connections (publishing and subscribed) are up.
    pub fn is_connected(&self) -> bool {
        self.shared.publisher.load(Ordering::Acquire)
            && self.shared.subscriber.load(Ordering::Acquire)
    }

    /// Writes not published because Redis was unreachable or the queue was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Random per-bus id carried in every message, so a proxy skips its own echoes.
    pub fn proxy_id(&self) -> &str {
        &self.proxy_id
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
    client_for(url).map(|_| ())
}

fn client_for(url: &str) -> Result<(Client, String)> {
    // The redis crate's parse errors don't echo the URL, so no password reaches the log.
    let info = url.into_connection_info().context("invalid Redis URL")?;
    // RESP3 delivers pub/sub messages as push frames on an ordinary connection; the RESP2
    // PubSub type would need the futures Stream traits, which this crate doesn't depend on.
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let info = info.set_redis_settings(settings);
    let target = info.addr().to_string();
    Ok((Client::open(info).context("invalid Redis URL")?, target))
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

struct Job {
    write: TableWrite,
    ack: Option<oneshot::Sender<Result<(), String>>>,
}

impl Job {
    fn new(mut write: TableWrite, ack: Option<oneshot::Sender<Result<(), String>>>) -> Job {
        // The table clock folds case; doing the same here keeps one hash field per table.
        for t in &mut write.tables {
            t.make_ascii_lowercase();
        }
        Job { write, ack }
    }
}

/// State both tasks and the handle see. The mutex only orders connection-state changes so
/// an outage is logged once however many connections notice it; it is never held across
/// an await.
struct Shared {
    publisher: AtomicBool,
    subscriber: AtomicBool,
    dropped: AtomicU64,
    log: Mutex<LinkLog>,
    /// host:port, for logs (the URL may hold a password).
    target: String,
}

#[derive(Default)]
struct LinkLog {
    ever_connected: bool,
    outage_reported: bool,
}

#[derive(Clone, Copy)]
enum Side {
    Publisher,
    Subscriber,
}

impl Shared {
    fn new(target: String) -> Shared {
        Shared {
            publisher: AtomicBool::new(false),
            subscriber: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            log: Mutex::new(LinkLog::default()),
            target,
        }
    }

    fn flag(&self, side: Side) -> &AtomicBool {
        match side {
            Side::Publisher => &self.publisher,
            Side::Subscriber => &self.subscriber,
        }
    }

    fn both(&self) -> bool {
        self.publisher.load(Ordering::Acquire) && self.subscriber.load(Ordering::Acquire)
    }

    fn up(&self, side: Side) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let before = self.both();
        self.flag(side).store(true, Ordering::Release);
        if !before && self.both() {
            if !log.ever_connected {
                tracing::info!("fleet bus: connected to Redis at {}", self.target);
            } else if log.outage_reported {
                tracing::info!("fleet bus: connection to Redis at {} is back", self.target);
            }
            log.ever_connected = true;
            log.outage_reported = false;
            metrics::gauge!("pgwarden_bus_connected").set(1.0);
        }
    }

    /// Marks one connection as lost; returns whether it had been up.
    fn down(&self, side: Side, err: &anyhow::Error) -> bool {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let was_up = self.flag(side).swap(false, Ordering::AcqRel);
        metrics::gauge!("pgwarden_bus_connected").set(0.0);
        if !log.outage_reported {
            let what = if log.ever_connected {
                "lost connection to"
            } else {
                "cannot reach"
            };
            tracing::warn!(
                // Plain Display: redis errors repeat their io source in the chain.
                "fleet bus: {what} Redis at {}: {err}; retrying, routing with this proxy's table clock meanwhile",
                self.target
            );
            log.outage_reported = true;
        }
        was_up
    }

    /// Shutdown: not an outage, so nothing is logged.
    fn stopped(&self, side: Side) {
        let _log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        self.flag(side).store(false, Ordering::Release);
        metrics::gauge!("pgwarden_bus_connected").set(0.0);
    }

    fn count_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("pgwarden_bus_dropped_total").increment(n);
    }

    fn drop_job(&self, job: Job, why: &str) {
        self.count_dropped(1);
        if let Some(ack) = job.ack {
            let _ = ack.send(Err(why.to_string()));
        }
    }
}

/// Resolves when the proxy shuts down (watch set or its sender gone) or the bus is dropped.
struct Stop {
    shutdown: watch::Receiver<bool>,
    gone: Option<oneshot::Receiver<()>>,
    stopped: bool,
}

impl Stop {
    fn new(shutdown: watch::Receiver<bool>, gone: Option<oneshot::Receiver<()>>) -> Stop {
        Stop {
            shutdown,
            gone,
            stopped: false,
        }
    }

    /// Cancel-safe: may be raced in select! and called again.
    async fn wait(&mut self) {
        if self.stopped {
            return;
        }
        let Stop { shutdown, gone, .. } = self;
        let shutdown = async {
            while !*shutdown.borrow_and_update() {
                if shutdown.changed().await.is_err() {
                    return;
                }
            }
        };
        let gone = async {
            match gone {
                Some(rx) => {
                    let _ = rx.await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown => {}
            _ = gone => {}
        }
        self.stopped = true;
    }
}

async fn connect(
    client: &Client,
    push: mpsc::UnboundedSender<PushInfo>,
) -> redis::RedisResult<MultiplexedConnection> {
    // A fresh push channel per connection: a stale disconnect notice can't end a new one.
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_push_sender(push);
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

fn is_disconnect(push: &Option<PushInfo>) -> bool {
    matches!(
        push,
        None | Some(PushInfo {
            kind: PushKind::Disconnection,
            ..
        })
    )
}

fn next_backoff(b: Duration) -> Duration {
    (b * 2).min(MAX_BACKOFF)
}

struct Publisher {
    client: Client,
    names: Arc<Names>,
    proxy_id: String,
    shared: Arc<Shared>,
}

impl Publisher {
    async fn run(self, mut jobs: mpsc::Receiver<Job>, mut stop: Stop) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let outcome = tokio::select! {
                _ = stop.wait() => break,
                r = self.session(&mut jobs) => r,
            };
            match outcome {
                Ok(()) => break, // queue closed: the bus was dropped
                Err(e) => {
                    if self.shared.down(Side::Publisher, &e) {
                        backoff = MIN_BACKOFF;
                    }
                }
            }
            // Writes that were queued before the loss was noticed are dropped while waiting.
            let pause = sleep(backoff);
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    _ = stop.wait() => return self.shared.stopped(Side::Publisher),
                    _ = &mut pause => break,
                    job = jobs.recv() => match job {
                        Some(job) => self.shared.drop_job(job, "not connected to Redis"),
                        None => return self.shared.stopped(Side::Publisher),
                    },
                }
            }
            backoff = next_backoff(backoff);
        }
        self.shared.stopped(Side::Publisher);
    }

    /// One connection's life. Ok when the queue closed, Err when the connection failed.
    async fn session(&self, jobs: &mut mpsc::Receiver<Job>) -> Result<()> {
        let (push_tx, mut push_rx) = mpsc::unbounded_channel();
        let mut conn = connect(&self.client, push_tx).await?;
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(STORE_AND_PUBLISH)
            .query_async(&mut conn)
            .await?;
        self.shared.up(Side::Publisher);
        let mut batch = Vec::with_capacity(BATCH);
        let mut ping = interval_at(Instant::now() + PING_EVERY, PING_EVERY);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
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
                .arg(encode(&self.proxy_id, w))
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
                    self.shared.drop_job(job, &why);
                }
                Err(e.into())
            }
        }
    }
}

struct Subscriber {
    client: Client,
    names: Arc<Names>,
    proxy_id: String,
    shared: Arc<Shared>,
    clock: Arc<TableClock>,
}

impl Subscriber {
    async fn run(self, mut stop: Stop) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let outcome = tokio::select! {
                _ = stop.wait() => break,
                r = self.session() => r,
            };
            let Err(e) = outcome;
            if self.shared.down(Side::Subscriber, &e) {
                backoff = MIN_BACKOFF;
            }
            tokio::select! {
                _ = stop.wait() => break,
                _ = sleep(backoff) => {}
            }
            backoff = next_backoff(backoff);
        }
        self.shared.stopped(Side::Subscriber);
    }

    /// One connection's life; returns only when it fails.
    async fn session(&self) -> Result<Infallible> {
        let (push_tx, mut push_rx) = mpsc::unbounded_channel();
        let mut conn = connect(&self.client, push_tx).await?;
        // Subscribe before loading: a write published during the load is then queued in
        // push_rx rather than lost, and applying it twice is harmless (advance is max).
        conn.subscribe(&self.names.channel).await?;
        let loaded = self.load_stored_clock(&mut conn).await?;
        tracing::debug!(loaded, "fleet bus: loaded the stored table clock");
        self.shared.up(Side::Subscriber);
        let mut ping = interval_at(Instant::now() + PING_EVERY, PING_EVERY);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                push = push_rx.recv() => match push {
                    Some(PushInfo { kind: PushKind::Message, data }) => self.apply(&data),
                    other if is_disconnect(&other) => bail!("connection closed"),
                    _ => {} // subscription confirmations
                },
                _ = ping.tick() => redis::cmd("PING").exec_async(&mut conn).await?,
            }
        }
    }

    /// SCAN + HGETALL of every `<prefix>:clock:*` hash into the local clock.
    async fn load_stored_clock(&self, conn: &mut MultiplexedConnection) -> Result<usize> {
        let mut cursor: u64 = 0;
        let mut loaded = 0;
        loop {
            // Keys are read as bytes: one odd key must not fail the load (and loop forever).
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&self.names.scan_pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .arg("TYPE")
                .arg("hash")
                .query_async(conn)
                .await?;
            for key in keys {
                let Some(db) = std::str::from_utf8(&key)
                    .ok()
                    .and_then(|k| k.strip_prefix(&self.names.clock_prefix))
                else {
                    continue;
                };
                let fields: HashMap<Vec<u8>, Vec<u8>> =
                    redis::cmd("HGETALL").arg(&key).query_async(conn).await?;
                for (table, value) in &fields {
                    let (Ok(table), Some(lsn)) = (
                        std::str::from_utf8(table),
                        std::str::from_utf8(value).ok().and_then(lsn::parse),
                    ) else {
                        continue;
                    };
                    self.clock.advance(db, [table], lsn);
                    loaded += 1;
                }
            }
            if next == 0 {
                return Ok(loaded);
            }
            cursor = next;
        }
    }

    /// A push is [channel, payload].
    fn apply(&self, data: &[Value]) {
        let Some(Value::BulkString(payload)) = data.get(1) else {
            return;
        };
        match std::str::from_utf8(payload).ok().and_then(decode) {
            Some((origin, _)) if origin == self.proxy_id => {} // our own write: already local
            Some((_, w)) => {
                self.clock
                    .advance(&w.db, w.tables.iter().map(String::as_str), w.lsn);
                metrics::counter!("pgwarden_bus_messages_total", "direction" => "in").increment(1);
            }
            None => tracing::debug!("fleet bus: ignored a malformed message"),
        }
    }
}

/// `1 \t origin \t db \t table,table \t X/Y`; db and table names escaped (see `escape`).
fn encode(origin: &str, w: &TableWrite) -> String {
    let tables: Vec<String> = w.tables.iter().map(|t| escape(t)).collect();
    format!(
        "{FORMAT_VERSION}\t{origin}\t{}\t{}\t{}",
        escape(&w.db),
        tables.join(","),
        lsn::format(w.lsn)
    )
}

fn decode(s: &str) -> Option<(String, TableWrite)> {
    let mut fields = s.split('\t');
    if fields.next()? != FORMAT_VERSION {
        return None;
    }
    let origin = fields.next()?.to_string();
    let db = unescape(fields.next()?)?;
    let tables = fields
        .next()?
        .split(',')
        .map(unescape)
        .collect::<Option<Vec<_>>>()?;
    let lsn = lsn::parse(fields.next()?)?;
    if fields.next().is_some() || tables.iter().any(String::is_empty) {
        return None;
    }
    Some((origin, TableWrite { db, tables, lsn }))
}

/// Quoted identifiers may hold any character; the separators become backslash escapes.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            ',' => out.push_str("\\c"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

fn unescape(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next()? {
            '\\' => '\\',
            't' => '\t',
            'c' => ',',
            'n' => '\n',
            'r' => '\r',
            _ => return None,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(db: &str, tables: &[&str], lsn: u64) -> TableWrite {
        TableWrite {
            db: db.into(),
            tables: tables.iter().map(|t| t.to_string()).collect(),
            lsn,
        }
    }

    #[test]
    fn messages_round_trip_with_odd_names() {
        let w = write(
            "my\tdb",
            &["a,b", "back\\slash", "new\nline", "plain"],
            0x16_B374_D848,
        );
        let text = encode("abc", &w);
        assert_eq!(text.matches('\t').count(), 4);
        assert_eq!(decode(&text), Some(("abc".to_string(), w)));
        assert_eq!(
            encode("p", &write("app", &["t", "u"], 0x1_0000_0010)),
            "1\tp\tapp\tt,u\t1/10"
        );
    }

    #[test]
    fn malformed_messages_are_rejected() {
        for bad in [
            "",
            "2\tp\tapp\tt\t0/1",
            "1\tp\tapp\tt",
            "1\tp\tapp\tt\tnot-an-lsn",
            "1\tp\tapp\tt\t0/1\textra",
            "1\tp\tapp\t\t0/1",
            "1\tp\tapp\tbad\\q\t0/1",
            "1\tp\tapp\ttrailing\\\t0/1",
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }

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
