//! The Redis link: one server, connections to it opened with timeouts and retried with
//! backoff, and outage logging that says "lost" and "back" once however many connections
//! notice. Nothing here knows the table clock, so another Redis user can reuse it.

use anyhow::{Context as _, Result};
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{interval_at, Instant, Interval, MissedTickBehavior};

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Generous because the fleet bus's catch-up HGETALL of a large clock may be big; a dead peer is found
/// sooner by the disconnect notice or by the ping.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// An idle connection is pinged this often, so a silently dead one (no RST) is noticed.
const PING_EVERY: Duration = Duration::from_secs(2);

/// How a link's user is named in logs and metrics.
pub(crate) struct LinkLabels {
    /// Log prefix, e.g. "fleet bus".
    pub name: &'static str,
    /// What the user does while Redis is away, ending the outage warning.
    pub fallback: &'static str,
    /// Gauge set to 1 while every connection is up and to 0 when one goes down (the
    /// user names it, so docs/metrics.md's check finds the name where it is made).
    pub gauge: metrics::Gauge,
}

/// One Redis server and the state of a fixed number of connections to it, numbered from 0.
/// The link is "up" only while all of them are; outage start and end are each logged once.
///
/// The mutex only orders connection-state changes so an outage is logged once however many
/// connections notice it; it is never held across an await.
pub(crate) struct RedisLink {
    client: Client,
    /// host:port, for logs (the URL may hold a password).
    target: String,
    labels: LinkLabels,
    up: Box<[AtomicBool]>,
    /// How many times the link became complete: a cache entry filled during one period
    /// must not be served in the next (invalidations may have been missed between).
    periods: AtomicU64,
    log: Mutex<LinkLog>,
}

#[derive(Default)]
struct LinkLog {
    ever_connected: bool,
    outage_reported: bool,
}

impl RedisLink {
    /// Parses `url` without connecting; connections are opened by [`RedisLink::connect`].
    pub(crate) fn open(url: &str, labels: LinkLabels, connections: usize) -> Result<RedisLink> {
        let (client, target) = client_for(url)?;
        Ok(RedisLink {
            client,
            target,
            labels,
            up: (0..connections).map(|_| AtomicBool::new(false)).collect(),
            periods: AtomicU64::new(0),
            log: Mutex::new(LinkLog::default()),
        })
    }

    /// Opens one connection. Push frames (pub/sub messages, the disconnect notice) go to
    /// `push`; give each connection a fresh channel, so a stale disconnect notice can't end
    /// a new connection.
    pub(crate) async fn connect(
        &self,
        push: mpsc::UnboundedSender<PushInfo>,
    ) -> redis::RedisResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_push_sender(push);
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// Connection `conn` is up.
    pub(crate) fn is_up(&self, conn: usize) -> bool {
        self.up[conn].load(Ordering::Acquire)
    }

    /// Every connection is up.
    pub(crate) fn all_up(&self) -> bool {
        self.up.iter().all(|f| f.load(Ordering::Acquire))
    }

    /// The number of the current period with every connection up, or None while any is
    /// down.
    pub(crate) fn period(&self) -> Option<u64> {
        let n = self.periods.load(Ordering::Acquire);
        (self.all_up() && self.periods.load(Ordering::Acquire) == n).then_some(n)
    }

    /// Marks connection `conn` as up; logs "connected" or "back" when that completes the link.
    pub(crate) fn up(&self, conn: usize) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let before = self.all_up();
        let others_up = self
            .up
            .iter()
            .enumerate()
            .all(|(i, f)| i == conn || f.load(Ordering::Acquire));
        // The new period is numbered before the link shows as up, so no reader pairs
        // "up" with the old number.
        if !before && others_up {
            self.periods.fetch_add(1, Ordering::AcqRel);
        }
        self.up[conn].store(true, Ordering::Release);
        if !before && self.all_up() {
            let LinkLabels { name, gauge, .. } = &self.labels;
            if !log.ever_connected {
                tracing::info!("{name}: connected to Redis at {}", self.target);
            } else if log.outage_reported {
                tracing::info!("{name}: connection to Redis at {} is back", self.target);
            }
            log.ever_connected = true;
            log.outage_reported = false;
            gauge.set(1.0);
        }
    }

    /// Marks connection `conn` as lost, logging the outage unless already logged; returns
    /// whether it had been up (the caller then restarts its backoff).
    pub(crate) fn down(&self, conn: usize, err: &anyhow::Error) -> bool {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let was_up = self.up[conn].swap(false, Ordering::AcqRel);
        let LinkLabels {
            name,
            fallback,
            gauge,
        } = &self.labels;
        gauge.set(0.0);
        if !log.outage_reported {
            let what = if log.ever_connected {
                "lost connection to"
            } else {
                "cannot reach"
            };
            tracing::warn!(
                // Plain Display: redis errors repeat their io source in the chain.
                "{name}: {what} Redis at {}: {err}; retrying, {fallback}",
                self.target
            );
            log.outage_reported = true;
        }
        was_up
    }

    /// Shutdown: not an outage, so nothing is logged.
    pub(crate) fn stopped(&self, conn: usize) {
        let _log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        self.up[conn].store(false, Ordering::Release);
        self.labels.gauge.set(0.0);
    }
}

/// Checks that `url` is a Redis URL a link can use, without connecting.
pub(crate) fn check_url(url: &str) -> Result<()> {
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

/// The push channel said the connection is gone (or the channel itself closed).
pub(crate) fn is_disconnect(push: &Option<PushInfo>) -> bool {
    matches!(
        push,
        None | Some(PushInfo {
            kind: PushKind::Disconnection,
            ..
        })
    )
}

/// A ticker for pinging an idle connection, first tick one period from now.
pub(crate) fn ping_interval() -> Interval {
    let mut ping = interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ping
}

/// Reconnect delays: doubling from 100 ms up to 2 s, restarted after a connection that
/// had been up, so a brief blip is retried quickly and a long outage doesn't spin.
pub(crate) struct Backoff(Duration);

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff(MIN_BACKOFF)
    }

    pub(crate) fn reset(&mut self) {
        self.0 = MIN_BACKOFF;
    }

    /// The pause before the next attempt; the one after it will be twice as long (capped).
    pub(crate) fn next(&mut self) -> Duration {
        let pause = self.0;
        self.0 = (pause * 2).min(MAX_BACKOFF);
        pause
    }
}

/// Resolves when the proxy shuts down (watch set or its sender gone) or, if given a
/// `gone` receiver, when its sender (held by the link's owner) is dropped.
pub(crate) struct Stop {
    shutdown: watch::Receiver<bool>,
    gone: Option<oneshot::Receiver<()>>,
    stopped: bool,
}

impl Stop {
    pub(crate) fn new(
        shutdown: watch::Receiver<bool>,
        gone: Option<oneshot::Receiver<()>>,
    ) -> Stop {
        Stop {
            shutdown,
            gone,
            stopped: false,
        }
    }

    /// Cancel-safe: may be raced in select! and called again.
    pub(crate) async fn wait(&mut self) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new();
        let pauses: Vec<u64> = (0..7).map(|_| b.next().as_millis() as u64).collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1600, 2000, 2000]);
        b.reset();
        assert_eq!(b.next(), MIN_BACKOFF);
    }
}
