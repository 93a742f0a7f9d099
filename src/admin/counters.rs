//! Handles of the per-request counters, registered once per proxy: the hot path then
//! increments an atomic instead of looking its labels up in the metrics registry.

use crate::router::plan::{Reason, Route};
use metrics::Counter;

const REASONS: [Reason; 13] = [
    Reason::Read,
    Reason::ReadOnlyTransaction,
    Reason::Write,
    Reason::Transaction,
    Reason::HintPrimary,
    Reason::HintReplica,
    Reason::SessionOverride,
    Reason::Unparsable,
    Reason::Pinned,
    Reason::SplitDisabled,
    Reason::NoReplica,
    Reason::FunctionCall,
    Reason::Utility,
];

/// How a read found its node (`pgwarden_reads_total{decision}`).
#[derive(Clone, Copy)]
pub enum ReadDecision {
    Replica,
    Waited,
    PrimaryFallback,
    /// Served on a shared read lane (pool.multiplex_reads).
    Multiplexed,
    /// On the primary at once: no replica had the position, and none was estimated to
    /// have it soon enough for a wait to pay (consistency.wait_for_replica: auto).
    PrimaryAtOnce,
}

pub struct Counters {
    /// pgwarden_queries_total by route, then by reason (REASONS order).
    queries: [[Counter; REASONS.len()]; 2],
    /// pgwarden_queries_total{reason="attached"} by route.
    attached: [Counter; 2],
    reads: [Counter; 5],
}

fn route_label(route: Route) -> &'static str {
    match route {
        Route::Primary => "primary",
        Route::Replica => "replica",
    }
}

impl Counters {
    /// Call after the metrics recorder is installed: handles made before are no-ops.
    pub fn register() -> Self {
        let queries = [Route::Primary, Route::Replica].map(|route| {
            let route = route_label(route);
            REASONS.map(|r| {
                metrics::counter!("pgwarden_queries_total", "route" => route, "reason" => r.label())
            })
        });
        let attached = [Route::Primary, Route::Replica].map(|route| {
            metrics::counter!("pgwarden_queries_total", "route" => route_label(route), "reason" => "attached")
        });
        let reads = [
            "replica",
            "waited",
            "primary_fallback",
            "multiplexed",
            "primary_at_once",
        ]
        .map(|d| metrics::counter!("pgwarden_reads_total", "decision" => d));
        Counters {
            queries,
            attached,
            reads,
        }
    }

    /// A request routed by the planner.
    pub fn query(&self, route: Route, reason: Reason) {
        // REASONS is in declaration order (tested), so the discriminant is the index.
        if let Some(c) = self.queries[route as usize].get(reason as usize) {
            c.increment(1);
        }
    }

    /// A request the client sent while a server was already attached.
    pub fn attached_query(&self, route: Route) {
        self.attached[route as usize].increment(1);
    }

    pub fn read(&self, decision: ReadDecision) {
        self.reads[decision as usize].increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_in_declaration_order() {
        for (i, r) in REASONS.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
    }
}
