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

impl Balancer {
    /// Picks one candidate; `rand01` is a uniform draw in [0, 1) (a parameter so the
    /// choice is testable). `advance` is false for requests that execute nothing (a
    /// prepare): otherwise a client alternating prepare and execute would land every
    /// execute on the same node.
    pub fn pick<'a>(
        &self,
        policy: LoadBalance,
        candidates: &[&'a Arc<Node>],
        rand01: f64,
        advance: bool,
    ) -> Option<&'a Arc<Node>> {
        if candidates.is_empty() {
            return None;
        }
        let chosen = match policy {
            LoadBalance::RoundRobin => {
                let i = if advance {
                    self.next.fetch_add(1, Ordering::Relaxed)
                } else {
                    self.next.load(Ordering::Relaxed)
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
pub fn nearest(candidates: Vec<&Arc<Node>>, tolerance: usize) -> Vec<&Arc<Node>> {
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
    let (near, far): (Vec<_>, Vec<_>) = candidates
        .iter()
        .copied()
        .partition(|n| n.runtime.rtt_us() <= band);
    let near_load = near
        .iter()
        .map(|n| n.runtime.outstanding())
        .min()
        .unwrap_or(usize::MAX);
    let far_load = far.iter().map(|n| n.runtime.outstanding()).min();
    match far_load {
        Some(f) if near_load >= f + tolerance => candidates,
        _ => near,
    }
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

    #[test]
    fn round_robin_alternates() {
        let (a, b) = (node("a", 1), node("b", 1));
        let c = [&a, &b];
        let bal = Balancer::default();
        let names: Vec<_> = (0..4)
            .map(|_| {
                bal.pick(LoadBalance::RoundRobin, &c, 0.0, true)
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
                bal.pick(LoadBalance::LeastOutstanding, &[&a, &b], 0.0, true)
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
            bal.pick(LoadBalance::WeightedRandom, &c, 0.0, true)
                .unwrap()
                .name,
            "a"
        );
        assert_eq!(
            bal.pick(LoadBalance::WeightedRandom, &c, 0.74, true)
                .unwrap()
                .name,
            "a"
        );
        assert_eq!(
            bal.pick(LoadBalance::WeightedRandom, &c, 0.76, true)
                .unwrap()
                .name,
            "b"
        );
        assert!(bal
            .pick(LoadBalance::WeightedRandom, &[], 0.5, true)
            .is_none());
    }
}
