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
    /// choice is testable).
    pub fn pick<'a>(
        &self,
        policy: LoadBalance,
        candidates: &[&'a Arc<Node>],
        rand01: f64,
    ) -> Option<&'a Arc<Node>> {
        if candidates.is_empty() {
            return None;
        }
        let chosen = match policy {
            LoadBalance::RoundRobin => {
                let i = self.next.fetch_add(1, Ordering::Relaxed);
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
            runtime: NodeRuntime::default(),
        })
    }

    #[test]
    fn round_robin_alternates() {
        let (a, b) = (node("a", 1), node("b", 1));
        let c = [&a, &b];
        let bal = Balancer::default();
        let names: Vec<_> = (0..4)
            .map(|_| {
                bal.pick(LoadBalance::RoundRobin, &c, 0.0)
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
                bal.pick(LoadBalance::LeastOutstanding, &[&a, &b], 0.0)
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
            bal.pick(LoadBalance::WeightedRandom, &c, 0.0).unwrap().name,
            "a"
        );
        assert_eq!(
            bal.pick(LoadBalance::WeightedRandom, &c, 0.74)
                .unwrap()
                .name,
            "a"
        );
        assert_eq!(
            bal.pick(LoadBalance::WeightedRandom, &c, 0.76)
                .unwrap()
                .name,
            "b"
        );
        assert!(bal.pick(LoadBalance::WeightedRandom, &[], 0.5).is_none());
    }
}
