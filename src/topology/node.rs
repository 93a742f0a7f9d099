//! One server node and its live counters (atomics, so sessions and monitors update them
//! without locks).

use crate::config::Role;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

pub struct Node {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub role: Role,
    pub weight: u32,
    pub runtime: NodeRuntime,
}

#[derive(Default)]
pub struct NodeRuntime {
    /// Milliseconds since the topology epoch until which the node gets no reads.
    banned_until_ms: AtomicU64,
    /// Queries currently running on this node through this proxy.
    outstanding: AtomicUsize,
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

    pub fn begin_query(&self) {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
    }

    pub fn end_query(&self) {
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
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
