//! Node monitors: one small task per node that, every `consistency.lag_interval_ms`,
//! reads its WAL position (primary: current; replica: replayed) and round-trip time,
//! publishes them into the node's live state, and bans a node that does not answer
//! (readmitting it when it answers again).

use super::{LagSample, Node, Topology};
use crate::backend::conn::{connect, ConnectSpec, ServerConn};
use crate::config::{Config, LagSource, MonitorCredentials, Role};
use crate::consistency::lsn;
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

const REPLICA_SQL: &str = "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, \
     (extract(epoch from now() - pg_last_xact_replay_timestamp()) * 1000)::bigint";
const PRIMARY_SQL: &str = "SELECT pg_current_wal_lsn()::text";
const AURORA_SQL: &str = "SELECT server_id::text, replica_lag_in_msec::bigint, \
     (extract(epoch from last_update_timestamp) * 1000)::bigint FROM aurora_replica_status()";

pub fn spawn(
    topology: Arc<ArcSwap<Topology>>,
    config: &Config,
    creds: MonitorCredentials,
    shutdown: watch::Receiver<bool>,
) {
    let snapshot = topology.load();
    for node in snapshot.nodes.iter() {
        let task = Monitor {
            node: node.clone(),
            topology: topology.clone(),
            interval: Duration::from_millis(config.consistency.lag_interval_ms),
            timeout: Duration::from_millis(config.health.timeout_ms),
            ban_ms: config.health.ban_ms,
            source: config.consistency.lag_source,
            aurora_ids: snapshot
                .nodes
                .iter()
                .map(|n| (n.aurora_id.clone(), n.clone()))
                .collect(),
            spec: ConnectSpec {
                node: node.name.clone(),
                host: node.host.clone(),
                port: node.port,
                user: creds.user.clone(),
                password: creds.password.clone(),
                database: creds.database.clone(),
                tls: config.server_tls,
                connect_timeout: Duration::from_millis(config.health.timeout_ms),
                prepared_capacity: 1,
                application_name: "pgwarden-monitor",
            },
            rtts: Default::default(),
        };
        tokio::spawn(task.run(shutdown.clone()));
    }
}

struct Monitor {
    node: Arc<Node>,
    topology: Arc<ArcSwap<Topology>>,
    interval: Duration,
    timeout: Duration,
    ban_ms: u64,
    source: LagSource,
    aurora_ids: Vec<(String, Arc<Node>)>,
    spec: ConnectSpec,
    /// Recent round trips (only this task touches it; a Mutex keeps `sample` &self).
    rtts: std::sync::Mutex<std::collections::VecDeque<u64>>,
}

/// Samples over which the round-trip minimum is taken (about a second by default).
const RTT_WINDOW: usize = 10;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn int(v: Option<&Option<String>>) -> Option<i64> {
    v?.as_deref()?.parse().ok()
}

impl Monitor {
    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut conn: Option<ServerConn> = None;
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Health failures are counted as consecutive misses so one slow sample under
        // load does not ban a replica.
        let mut misses = 0u32;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let res = tokio::time::timeout(self.timeout, self.sample(&mut conn)).await;
            let topo = self.topology.load();
            match res {
                Ok(Ok(())) => {
                    misses = 0;
                    if self.node.runtime.is_banned(topo.now_ms()) {
                        tracing::info!(node = %self.node.name, "node answers again; back in the read set");
                    }
                    self.node.runtime.unban();
                }
                Ok(Err(e)) => {
                    conn = None;
                    misses += 1;
                    self.node.runtime.lag_unknown();
                    self.node.ban(
                        topo.now_ms(),
                        self.ban_ms,
                        &format!("monitor query failed: {e}"),
                    );
                }
                Err(_) => {
                    conn = None;
                    misses += 1;
                    self.node.runtime.lag_unknown();
                    if misses >= 2 {
                        self.node
                            .ban(topo.now_ms(), self.ban_ms, "monitor query timed out");
                    }
                }
            }
            topo.lag_changed.notify_waiters();
        }
    }

    /// Records one round trip; publishes the minimum of the last few.
    fn rtt(&self, started: Instant) {
        let us = started.elapsed().as_micros() as u64;
        let mut w = self.rtts.lock().expect("rtt window");
        if w.len() == RTT_WINDOW {
            w.pop_front();
        }
        w.push_back(us);
        self.node
            .runtime
            .observe_rtt(w.iter().copied().min().unwrap_or(us));
    }

    async fn sample(&self, conn: &mut Option<ServerConn>) -> anyhow::Result<()> {
        if conn.is_none() {
            *conn = Some(connect(&self.spec).await?);
        }
        let c = conn.as_mut().expect("just connected");
        let started = Instant::now();
        match (self.node.role, self.source) {
            (Role::Primary, LagSource::Postgres) => {
                let row = c.query_row(PRIMARY_SQL).await?;
                self.rtt(started);
                let pos = row
                    .first()
                    .and_then(|v| lsn::parse(v.as_deref()?))
                    .unwrap_or(0);
                self.node.runtime.publish_lag(LagSample {
                    position: pos,
                    ..Default::default()
                });
            }
            (Role::Primary, LagSource::Aurora) => {
                // Aurora reports every replica's lag from any node: positions become times.
                let rows = c.query_rows(AURORA_SQL).await?;
                self.rtt(started);
                self.node.runtime.publish_lag(LagSample {
                    position: now_ms(),
                    ..Default::default()
                });
                for r in rows {
                    let (Some(Some(id)), Some(lag), Some(updated)) =
                        (r.first(), int(r.get(1)), int(r.get(2)))
                    else {
                        continue;
                    };
                    if let Some((_, n)) = self
                        .aurora_ids
                        .iter()
                        .find(|(a, n)| a == id && n.role == Role::Replica)
                    {
                        let lag = lag.max(0) as u64;
                        n.runtime.publish_lag(LagSample {
                            position: (updated.max(0) as u64).saturating_sub(lag),
                            lag_bytes: 0,
                            lag_ms: lag,
                        });
                    }
                }
            }
            (Role::Replica, LagSource::Postgres) => {
                let row = c.query_row(REPLICA_SQL).await?;
                self.rtt(started);
                if row.first().and_then(|v| v.as_deref()) != Some("t") {
                    // Promoted or misconfigured: its position says nothing about replay.
                    self.node.runtime.lag_unknown();
                    return Ok(());
                }
                let pos = row
                    .get(1)
                    .and_then(|v| lsn::parse(v.as_deref()?))
                    .unwrap_or(0);
                let topo = self.topology.load();
                let primary = topo.primary().map(|p| p.runtime.position()).unwrap_or(0);
                let lag_bytes = primary.saturating_sub(pos);
                // An idle primary sends no new transactions, so the last replay time
                // grows old while the replica is in fact caught up.
                let lag_ms = if lag_bytes == 0 {
                    0
                } else {
                    int(row.get(2)).unwrap_or(0).max(0) as u64
                };
                self.node.runtime.publish_lag(LagSample {
                    position: pos,
                    lag_bytes,
                    lag_ms,
                });
                metrics::gauge!("pgwarden_replica_lag_bytes", "node" => self.node.name.clone())
                    .set(lag_bytes as f64);
                metrics::gauge!("pgwarden_replica_lag_ms", "node" => self.node.name.clone())
                    .set(lag_ms as f64);
            }
            (Role::Replica, LagSource::Aurora) => {
                c.run_internal("SELECT 1").await?;
                self.rtt(started);
            }
        }
        Ok(())
    }
}
