//! The subscriber task: listens on the writes channel and advances the local table clock
//! from other proxies' messages, after catching up from the stored clock hashes on every
//! (re)connect.

use super::link::{is_disconnect, ping_interval, Backoff, RedisLink, Stop};
use super::{wire, Names, SUBSCRIBER};
use crate::consistency::{lsn, TableClock};
use anyhow::{bail, Result};
use redis::aio::MultiplexedConnection;
use redis::{PushInfo, PushKind, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::time::sleep;

/// Keys asked for per SCAN step of the catch-up.
const SCAN_COUNT: usize = 500;

pub(super) struct Subscriber {
    pub(super) link: Arc<RedisLink>,
    pub(super) names: Arc<Names>,
    pub(super) proxy_id: String,
    pub(super) clock: Arc<TableClock>,
}

impl Subscriber {
    pub(super) async fn run(self, mut stop: Stop) {
        let mut backoff = Backoff::new();
        loop {
            let outcome = tokio::select! {
                _ = stop.wait() => break,
                r = self.session() => r,
            };
            let Err(e) = outcome;
            if self.link.down(SUBSCRIBER, &e) {
                backoff.reset();
            }
            tokio::select! {
                _ = stop.wait() => break,
                _ = sleep(backoff.next()) => {}
            }
        }
        self.link.stopped(SUBSCRIBER);
    }

    /// One connection's life; returns only when it fails.
    async fn session(&self) -> Result<Infallible> {
        let (push_tx, mut push_rx) = mpsc::unbounded_channel();
        let mut conn = self.link.connect(push_tx).await?;
        // Subscribe before loading: a write published during the load is then queued in
        // push_rx rather than lost, and applying it twice is harmless (advance is max).
        conn.subscribe(&self.names.channel).await?;
        let loaded = self.load_stored_clock(&mut conn).await?;
        tracing::debug!(loaded, "fleet bus: loaded the stored table clock");
        self.link.up(SUBSCRIBER);
        let mut ping = ping_interval();
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
        match std::str::from_utf8(payload).ok().and_then(wire::decode) {
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
