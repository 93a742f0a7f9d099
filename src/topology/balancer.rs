//! Choosing a node among the read candidates: round-robin, least outstanding queries,
//! or weighted random.

use super::Node;
use crate::config::LoadBalance;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Default)]
pub struct Balancer {
    next: AtomicUsize,
}

/// Where a pick stands in the rotation (round-robin) or the draw (weighted random).
#[derive(Clone, Copy, Debug)]
pub enum Draw {
    /// A request of its own: the rotation moves on; `rand01` is a fresh uniform draw in
    /// [0, 1).
    Next { rand01: f64 },
    /// A request that executes nothing (a prepare): the rotation stays, or a client
    /// alternating prepare and execute would land every execute on the same node.
    Same { rand01: f64 },
    /// A client's own turn and draw, fixed at login: its reads stay on one node while
    /// the candidates stay the same (sticky reads).
    Client { turn: usize, rand01: f64 },
}

impl Balancer {
    /// A turn for a new client: clients take the candidates in rotation.
    pub fn client_turn(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Moves the rotation on, for a request whose node was picked with `Draw::Same`.
    pub fn advance(&self) {
        self.next.fetch_add(1, Ordering::Relaxed);
    }

    /// Picks one candidate (`draw` is a parameter so the choice is testable).
    pub fn pick<'a>(
        &self,
        policy: LoadBalance,
        candidates: &[&'a Arc<Node>],
        draw: Draw,
    ) -> Option<&'a Arc<Node>> {
        if candidates.is_empty() {
            return None;
        }
        let rand01 = match draw {
            Draw::Next { rand01 } | Draw::Same { rand01 } | Draw::Client { rand01, .. } => rand01,
        };
        let chosen = match policy {
            LoadBalance::RoundRobin => {
                let i = match draw {
                    Draw::Next { .. } => self.next.fetch_add(1, Ordering::Relaxed),
                    Draw::Same { .. } => self.next.load(Ordering::Relaxed),
                    Draw::Client { turn, .. } => turn,
                };
                candidates[i % candidates.len()]
            }
            LoadBalance::LeastOutstanding => {
                // Ties rotate so equally idle replicas share the load.
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                let n = candidates.len();
                (0..n)
                    .map(|k| candidates[(start + k) % n])
                    .min_by_key(|c| c.runtime.outstanding())
                    .expect("non-empty")
            }
            LoadBalance::WeightedRandom => {
                let total: u64 = candidates.iter().map(|c| c.weight.max(1) as u64).sum();
                let mut target = (rand01 * total as f64) as u64;
                let mut pick = candidates[candidates.len() - 1];
                for c in candidates {
                    let w = c.weight.max(1) as u64;
                    if target < w {
                        pick = c;
                        break;
                    }
                    target -= w;
                }
                pick
            }
        };
        Some(chosen)
    }
}

/// Keeps the candidates that are about as near as the nearest one (within a band of
/// max(5 ms, the nearest RTT) above it), unless they are all `tolerance` queries busier
/// than the least busy farther one. Nodes without an RTT yet count as near.
pub fn nearest(mut candidates: Vec<&Arc<Node>>, tolerance: usize) -> Vec<&Arc<Node>> {
    let Some(min) = candidates
        .iter()
        .map(|n| n.runtime.rtt_us())
        .filter(|r| *r > 0)
        .min()
    else {
        return candidates;
    };
    // Local replicas differ by noise (and by load, under which RTTs swing by
    // milliseconds); another region differs by tens of milliseconds.
    let band = min + min.max(5_000);
    let near = |n: &&Arc<Node>| n.runtime.rtt_us() <= band;
    let load_of = |want_near: bool| {
        candidates
            .iter()
            .filter(|n| near(n) == want_near)
            .map(|n| n.runtime.outstanding())
            .min()
    };
    let near_load = load_of(true).unwrap_or(usize::MAX);
    match load_of(false) {
        Some(f) if near_load >= f + tolerance => {}
        // In place: this runs for every replica read.
        _ => candidates.retain(near),
    }
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;
    use crate::topology::NodeRuntime;

    fn node(name: &str, weight: u32) -> Arc<Node> {
        Arc::new(Node {
            name: name.into(),
            host: "h".into(),
            port: 1,
            role: Role::Replica,
            weight,
            aurora_id: name.into(),
            runtime: NodeRuntime::default(),
        })
    }

    #[test]
    fn nearest_prefers_low_rtt_unless_much_busier() {
        let (a, b, c) = (node("a", 1), node("b", 1), node("c", 1));
        a.runtime.observe_rtt(300);
        b.runtime.observe_rtt(400);
        c.runtime.observe_rtt(25_000);
        let names = |v: Vec<&Arc<Node>>| v.iter().map(|n| n.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(nearest(vec![&a, &b, &c], 4)), ["a", "b"]);
        for _ in 0..4 {
            a.runtime.begin_query();
            b.runtime.begin_query();
        }
        assert_eq!(names(nearest(vec![&a, &b, &c], 4)), ["a", "b", "c"]);
    }

    fn next(rand01: f64) -> Draw {
        Draw::Next { rand01 }
    }

    #[test]
    fn sticky_clients_stay_and_spread() {
        let (a, b) = (node("a", 1), node("b", 1));
        let c = [&a, &b];
        let bal = Balancer::default();
        let clients: Vec<_> = (0..4)
            .map(|_| Draw::Client {
                turn: bal.client_turn(),
                rand01: 0.0,
            })
            .collect();
        for _ in 0..3 {
            let names: Vec<_> = clients
                .iter()
                .map(|d| {
                    bal.pick(LoadBalance::RoundRobin, &c, *d)
                        .unwrap()
                        .name
                        .clone()
                })
                .collect();
            assert_eq!(names, ["a", "b", "a", "b"]);
        }
        // With one candidate left every client uses it.
        assert_eq!(
            bal.pick(LoadBalance::RoundRobin, &[&b], clients[0])
                .unwrap()
                .name,
            "b"
        );
    }

    #[test]
    fn round_robin_alternates() {
        let (a, b) = (node("a", 1), node("b", 1));
        let c = [&a, &b];
        let bal = Balancer::default();
        let names: Vec<_> = (0..4)
            .map(|_| {
                bal.pick(LoadBalance::RoundRobin, &c, next(0.0))
                    .unwrap()
                    .name
                    .clone()
            })
            .collect();
        assert_eq!(names, ["a", "b", "a", "b"]);
    }

    #[test]
    fn least_outstanding_avoids_the_busy_node() {
        let (a, b) = (node("a", 1), node("b", 1));
        a.runtime.begin_query();
        let bal = Balancer::default();
        for _ in 0..4 {
            assert_eq!(
                bal.pick(LoadBalance::LeastOutstanding, &[&a, &b], next(0.0))
                    .unwrap()
                    .name,
                "b"
            );
        }
    }

    #[test]
    fn weighted_random_follows_weights() {
        let (a, b) = (node("a", 3), node("b", 1));
        let bal = Balancer::default();
        let c = [&a, &b];
        assert_eq!(
            bal.pick(LoadBalance::WeightedRandom, &c, next(0.0))
                .unwrap()
                .name,
            "a"
        );
        assert_eq!(
            bal.pick(LoadBalance::WeightedRandom, &c, next(0.74))
                .unwrap()
                .name,
            "a"
        );
        assert_eq!(
            bal.pick(LoadBalance::WeightedRandom, &c, next(0.76))
                .unwrap()
                .name,
            "b"
        );
        assert!(bal
            .pick(LoadBalance::WeightedRandom, &[], next(0.5))
            .is_none());
    }
}
