//! One server node and its live counters (atomics, so sessions and monitors update them
//! without locks).

use crate::config::Role;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

pub struct Node {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub role: Role,
    pub weight: u32,
    pub aurora_id: String,
    pub runtime: NodeRuntime,
}

#[derive(Default)]
pub struct NodeRuntime {
    /// Milliseconds since the topology epoch until which the node gets no reads.
    banned_until_ms: AtomicU64,
    /// Queries currently running on this node through this proxy.
    outstanding: AtomicUsize,
    /// Lower bound of the replayed position (replicas) or current position (primary):
    /// a WAL LSN, or a time in ms for time-based lag sources. 0 until first measured.
    position: AtomicU64,
    lag_bytes: AtomicU64,
    lag_ms: AtomicU64,
    /// Round-trip time of the monitor's query, in microseconds (0: unknown).
    rtt_us: AtomicU64,
    /// The lag is measured and current (false until the first sample and after a failure).
    lag_known: AtomicBool,
    /// When (µs on the caller's clock) a read last found another query running here.
    busy_at_us: AtomicU64,
    /// The monitor's last sampled position and when (ms since the UNIX epoch), and the
    /// position's recent rate of progress per ms: what `consistency::wait` estimates from.
    sampled_position: AtomicU64,
    sampled_at_ms: AtomicU64,
    per_ms: AtomicU64,
}

/// What the lag monitor measured on one node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LagSample {
    pub position: u64,
    pub lag_bytes: u64,
    pub lag_ms: u64,
}

impl NodeRuntime {
    pub fn is_banned(&self, now_ms: u64) -> bool {
        self.banned_until_ms.load(Ordering::Relaxed) > now_ms
    }

    pub fn ban_until(&self, until_ms: u64) {
        self.banned_until_ms.fetch_max(until_ms, Ordering::Relaxed);
    }

    pub fn unban(&self) {
        self.banned_until_ms.store(0, Ordering::Relaxed);
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Whether the node runs another query now or did within `window_us` of `now_us`;
    /// a read that finds it busy says so for the reads after it.
    pub fn recently_busy(&self, now_us: u64, window_us: u64) -> bool {
        if self.outstanding() > 0 {
            self.busy_at_us.store(now_us, Ordering::Relaxed);
            return true;
        }
        now_us.saturating_sub(self.busy_at_us.load(Ordering::Relaxed)) <= window_us
            && self.busy_at_us.load(Ordering::Relaxed) != 0
    }

    pub fn begin_query(&self) {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
    }

    pub fn end_query(&self) {
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn publish_lag(&self, s: LagSample) {
        let now = crate::session::clock::now_ms();
        let before = self.sampled_position.swap(s.position, Ordering::Relaxed);
        let at = self.sampled_at_ms.swap(now, Ordering::Relaxed);
        if at != 0 && now > at && s.position >= before {
            // A moving average over about four samples: replay comes in bursts.
            let rate = (s.position - before) / (now - at);
            let old = self.per_ms.load(Ordering::Relaxed);
            self.per_ms.store((old * 3 + rate) / 4, Ordering::Relaxed);
        }
        // A position never moves back within a timeline; a lower reading is a race
        // between samples, not news.
        self.position.fetch_max(s.position, Ordering::Relaxed);
        self.lag_bytes.store(s.lag_bytes, Ordering::Relaxed);
        self.lag_ms.store(s.lag_ms, Ordering::Relaxed);
        self.lag_known.store(true, Ordering::Release);
    }

    /// A replayed position seen outside the monitor (a session asked the replica).
    pub fn observe_position(&self, position: u64) {
        self.position.fetch_max(position, Ordering::Relaxed);
    }

    pub fn lag_unknown(&self) {
        self.lag_known.store(false, Ordering::Release);
    }

    pub fn lag(&self) -> Option<LagSample> {
        self.lag_known.load(Ordering::Acquire).then(|| LagSample {
            position: self.position.load(Ordering::Relaxed),
            lag_bytes: self.lag_bytes.load(Ordering::Relaxed),
            lag_ms: self.lag_ms.load(Ordering::Relaxed),
        })
    }

    /// What the monitor last saw of the node's replay, for `consistency::wait`.
    pub fn replay(&self) -> crate::consistency::wait::Replay {
        crate::consistency::wait::Replay {
            position: self.sampled_position.load(Ordering::Relaxed),
            sampled_at_ms: self.sampled_at_ms.load(Ordering::Relaxed),
            per_ms: self.per_ms.load(Ordering::Relaxed),
        }
    }

    pub fn position(&self) -> u64 {
        self.position.load(Ordering::Relaxed)
    }

    /// Publishes the node's round-trip time (the monitor passes the minimum of its
    /// recent samples: queueing under load only ever adds to a round trip, distance
    /// does not go away).
    pub fn observe_rtt(&self, us: u64) {
        self.rtt_us.store(us.max(1), Ordering::Relaxed);
    }

    pub fn rtt_us(&self) -> u64 {
        self.rtt_us.load(Ordering::Relaxed)
    }
}

impl Node {
    /// Takes the node out of the read set for `ban_ms`.
    pub fn ban(&self, now_ms: u64, ban_ms: u64, why: &str) {
        if !self.runtime.is_banned(now_ms) {
            tracing::warn!(node = %self.name, reason = why, ban_ms, "node banned from reads");
            metrics::counter!("pgwarden_bans_total", "node" => self.name.clone()).increment(1);
        }
        self.runtime.ban_until(now_ms + ban_ms);
    }
}
