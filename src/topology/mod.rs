//! Nodes and what is known about them: role, health and bans, outstanding queries.
//! Monitors publish into a snapshot; the hot path only reads it.

pub mod balancer;
pub mod choose;
pub mod health;
pub mod node;

pub use crate::consistency::ReadNeed;
pub use choose::{choose, Choice};
pub use node::{LagSample, Node, NodeRuntime};

use crate::config::{Config, Role};
use std::sync::Arc;
use std::time::Instant;

/// An immutable view of the nodes; swapped whole when the set of nodes or roles changes.
pub struct Topology {
    pub nodes: Vec<Arc<Node>>,
    /// Origin for the millisecond clocks kept in atomics.
    pub epoch: Instant,
    /// Woken after every monitor sample, for reads waiting for a replica to catch up.
    pub lag_changed: tokio::sync::Notify,
}

impl Topology {
    pub fn from_config(c: &Config, epoch: Instant) -> Topology {
        Topology {
            nodes: c
                .nodes
                .iter()
                .map(|n| {
                    Arc::new(Node {
                        name: n.name.clone(),
                        host: n.host.clone(),
                        port: n.port,
                        role: n.role,
                        weight: n.weight,
                        aurora_id: n.aurora_id.clone().unwrap_or_else(|| n.name.clone()),
                        runtime: NodeRuntime::default(),
                    })
                })
                .collect(),
            epoch,
            lag_changed: tokio::sync::Notify::new(),
        }
    }

    pub fn primary(&self) -> Option<&Arc<Node>> {
        self.nodes.iter().find(|n| n.role == Role::Primary)
    }

    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Nodes that may serve a read needing `need` right now.
    pub fn eligible(
        &self,
        include_primary: bool,
        need: &ReadNeed,
        excluded: &[String],
    ) -> Vec<&Arc<Node>> {
        let now = self.now_ms();
        self.nodes
            .iter()
            .filter(|n| !excluded.iter().any(|e| *e == n.name))
            .filter(|n| match n.role {
                Role::Primary => include_primary,
                Role::Replica => {
                    !n.runtime.is_banned(now)
                        && n.runtime.lag().is_some_and(|l| {
                            l.position >= need.min_position
                                && l.lag_bytes <= need.max_lag_bytes
                                && l.lag_ms <= need.max_lag_ms
                        })
                }
            })
            .collect()
    }

    /// Nodes that may serve a read right now.
    pub fn read_candidates(&self, include_primary: bool) -> Vec<&Arc<Node>> {
        let now = self.now_ms();
        self.nodes
            .iter()
            .filter(|n| n.role == Role::Replica || include_primary)
            .filter(|n| !n.runtime.is_banned(now))
            .collect()
    }

    pub fn has_usable_replica(&self) -> bool {
        let now = self.now_ms();
        self.nodes
            .iter()
            .any(|n| n.role == Role::Replica && !n.runtime.is_banned(now))
    }
}
