//! The node for a read, in one place: the nodes that may serve it now (replay position,
//! lag budget, bans, exclusions), the nearest of those, then the balancer's pick.

use super::balancer::{nearest, Balancer, Draw};
use super::{Node, Topology};
use crate::config::{Config, LoadBalance};
use crate::consistency::ReadNeed;
use std::sync::Arc;

/// How a read picks among the nodes that may serve it.
#[derive(Debug, Clone, Copy)]
pub struct Choice {
    /// The primary counts as a candidate (routing.primary_reads).
    pub include_primary: bool,
    /// consistency.nearest_tolerance (see balancer::nearest).
    pub nearest_tolerance: usize,
    pub load_balance: LoadBalance,
}

impl Choice {
    /// The usual choice for a read under `cfg`; `include_primary` only where the
    /// primary may take a read meant for a replica (not on lanes, not for probes).
    pub fn from_config(cfg: &Config, include_primary: bool) -> Choice {
        Choice {
            include_primary: include_primary && cfg.routing.primary_reads,
            nearest_tolerance: cfg.consistency.nearest_tolerance,
            load_balance: cfg.routing.load_balance,
        }
    }
}

/// The node for a read needing `need`, skipping `excluded`; None when no node may serve
/// it now.
pub fn choose<'a>(
    topo: &'a Topology,
    balancer: &Balancer,
    choice: Choice,
    need: &ReadNeed,
    excluded: &[String],
    draw: Draw,
) -> Option<&'a Arc<Node>> {
    let eligible = topo.eligible(choice.include_primary, need, excluded);
    let near = nearest(eligible, choice.nearest_tolerance);
    balancer.pick(choice.load_balance, &near, draw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;
    use crate::topology::{LagSample, NodeRuntime};
    use std::time::Instant;

    /// One node of a table row: name, role, lag sample (None: unknown), banned, RTT µs.
    type Row = (&'static str, Role, Option<(u64, u64, u64)>, bool, u64);
    /// A case: nodes, include the primary, excluded names, the names of two picks.
    type Case = (
        &'static [Row],
        bool,
        &'static [&'static str],
        &'static [&'static str],
    );

    fn topology(rows: &[Row]) -> Topology {
        let topo = Topology {
            nodes: rows
                .iter()
                .map(|(name, role, ..)| {
                    Arc::new(Node {
                        name: name.to_string(),
                        host: "h".into(),
                        port: 1,
                        role: *role,
                        weight: 1,
                        aurora_id: name.to_string(),
                        runtime: NodeRuntime::default(),
                    })
                })
                .collect(),
            epoch: Instant::now(),
            lag_changed: tokio::sync::Notify::new(),
        };
        for (n, (_, _, lag, banned, rtt)) in topo.nodes.iter().zip(rows) {
            if let Some((position, lag_bytes, lag_ms)) = *lag {
                n.runtime.publish_lag(LagSample {
                    position,
                    lag_bytes,
                    lag_ms,
                });
            }
            if *banned {
                n.runtime.ban_until(u64::MAX);
            }
            if *rtt > 0 {
                n.runtime.observe_rtt(*rtt);
            }
        }
        topo
    }

    const NEED: ReadNeed = ReadNeed {
        min_position: 100,
        max_lag_bytes: 1000,
        max_lag_ms: 500,
    };

    fn choice(include_primary: bool) -> Choice {
        Choice {
            include_primary,
            nearest_tolerance: 4,
            load_balance: LoadBalance::RoundRobin,
        }
    }

    /// Names the nodes `choose` returns over `n` picks of `Draw::Next`.
    fn picks(
        topo: &Topology,
        c: Choice,
        need: &ReadNeed,
        excluded: &[&str],
        n: usize,
    ) -> Vec<String> {
        let bal = Balancer::default();
        let excluded: Vec<String> = excluded.iter().map(|s| s.to_string()).collect();
        (0..n)
            .filter_map(|_| {
                choose(topo, &bal, c, need, &excluded, Draw::Next { rand01: 0.0 })
                    .map(|n| n.name.clone())
            })
            .collect()
    }

    #[test]
    fn only_nodes_that_may_serve_the_read_are_chosen() {
        use Role::*;
        let cases: &[Case] = &[
            // Both replicas have replayed 100 and are within budget: they alternate.
            (
                &[
                    ("p", Primary, None, false, 0),
                    ("r1", Replica, Some((100, 0, 0)), false, 0),
                    ("r2", Replica, Some((150, 0, 0)), false, 0),
                ],
                false,
                &[],
                &["r1", "r2"],
            ),
            // r1 has not replayed the read's position.
            (
                &[
                    ("p", Primary, None, false, 0),
                    ("r1", Replica, Some((99, 0, 0)), false, 0),
                    ("r2", Replica, Some((150, 0, 0)), false, 0),
                ],
                false,
                &[],
                &["r2", "r2"],
            ),
            // Over the byte budget, over the time budget, lag unknown, banned: none.
            (
                &[
                    ("r1", Replica, Some((200, 1001, 0)), false, 0),
                    ("r2", Replica, Some((200, 0, 501)), false, 0),
                    ("r3", Replica, None, false, 0),
                    ("r4", Replica, Some((200, 0, 0)), true, 0),
                ],
                false,
                &[],
                &[],
            ),
            // An excluded replica is skipped.
            (
                &[
                    ("r1", Replica, Some((200, 0, 0)), false, 0),
                    ("r2", Replica, Some((200, 0, 0)), false, 0),
                ],
                false,
                &["r1"],
                &["r2", "r2"],
            ),
            // The primary only when asked for, and then whatever its lag.
            (
                &[
                    ("p", Primary, None, false, 0),
                    ("r1", Replica, Some((99, 0, 0)), false, 0),
                ],
                true,
                &[],
                &["p", "p"],
            ),
            (
                &[
                    ("p", Primary, None, false, 0),
                    ("r1", Replica, Some((99, 0, 0)), false, 0),
                ],
                false,
                &[],
                &[],
            ),
            // A far replica (another region) is left while a near one can serve.
            (
                &[
                    ("near", Replica, Some((200, 0, 0)), false, 300),
                    ("far", Replica, Some((200, 0, 0)), false, 40_000),
                ],
                false,
                &[],
                &["near", "near"],
            ),
        ];
        for (i, (rows, primary, excluded, want)) in cases.iter().enumerate() {
            let topo = topology(rows);
            assert_eq!(
                picks(&topo, choice(*primary), &NEED, excluded, 2),
                *want,
                "case {i}"
            );
        }
    }

    #[test]
    fn a_read_needing_nothing_takes_any_replica_within_budget() {
        use Role::*;
        let topo = topology(&[
            ("r1", Replica, Some((0, 0, 0)), false, 0),
            ("r2", Replica, Some((5, 0, 0)), false, 0),
        ]);
        let any = ReadNeed {
            min_position: 0,
            ..NEED
        };
        assert_eq!(picks(&topo, choice(false), &any, &[], 2), ["r1", "r2"]);
        // Nothing can be known to have replayed a commit still being captured.
        let pending = ReadNeed {
            min_position: crate::consistency::clock::UNREACHABLE,
            ..NEED
        };
        assert!(picks(&topo, choice(false), &pending, &[], 1).is_empty());
    }

    #[test]
    fn the_same_draw_does_not_move_the_rotation() {
        use Role::*;
        let topo = topology(&[
            ("r1", Replica, Some((200, 0, 0)), false, 0),
            ("r2", Replica, Some((200, 0, 0)), false, 0),
        ]);
        let bal = Balancer::default();
        let same = Draw::Same { rand01: 0.0 };
        let a = choose(&topo, &bal, choice(false), &NEED, &[], same).map(|n| n.name.clone());
        let b = choose(&topo, &bal, choice(false), &NEED, &[], same).map(|n| n.name.clone());
        assert_eq!(a, b);
    }
}
