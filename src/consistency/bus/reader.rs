//! The reader task: keeps one connection open for reading the stored clock on demand.
//! A read through this proxy may race the message of a write another proxy has just
//! acknowledged; the stored clock already has that write (the other proxy held its
//! client's reply until Redis had it), so a read that looks there first cannot miss it.

use super::link::{is_disconnect, ping_interval, Backoff, RedisLink, Stop};
use super::READER;
use anyhow::{bail, Result};
use redis::aio::MultiplexedConnection;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio::time::sleep;

pub(super) struct Reader {
    pub(super) link: Arc<RedisLink>,
    /// The open connection, cloned by each read (a multiplexed connection pipelines
    /// them); None while there is none.
    pub(super) conn: watch::Sender<Option<MultiplexedConnection>>,
}

impl Reader {
    /// Runs until `stop`, or until the bus handle (the connection's only reader) is gone.
    pub(super) async fn run(self, mut stop: Stop) {
        let mut backoff = Backoff::new();
        loop {
            let outcome = tokio::select! {
                _ = stop.wait() => break,
                _ = self.conn.closed() => break,
                r = self.session() => r,
            };
            let Err(e) = outcome;
            self.conn.send_replace(None);
            if self.link.down(READER, &e) {
                backoff.reset();
            }
            tokio::select! {
                _ = stop.wait() => break,
                _ = self.conn.closed() => break,
                _ = sleep(backoff.next()) => {}
            }
        }
        self.conn.send_replace(None);
        self.link.stopped(READER);
    }

    /// One connection's life; returns only when it fails.
    async fn session(&self) -> Result<Infallible> {
        let (push_tx, mut push_rx) = mpsc::unbounded_channel();
        let mut conn = self.link.connect(push_tx).await?;
        self.conn.send_replace(Some(conn.clone()));
        self.link.up(READER);
        let mut ping = ping_interval();
        loop {
            tokio::select! {
                push = push_rx.recv() => if is_disconnect(&push) {
                    bail!("connection closed");
                },
                _ = ping.tick() => redis::cmd("PING").exec_async(&mut conn).await?,
            }
        }
    }
}
