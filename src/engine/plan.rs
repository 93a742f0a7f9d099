//! Routing a complete client request: what its SQL does (through the parse cache), the
//! session's overrides and the topology go into the pure router; the Plan picks a node.

use super::fleet::FleetReads;
use super::Engine;
use crate::config::ConsistencyMode;
use crate::consistency;
use crate::consistency::clock::UNREACHABLE;
use crate::consistency::reach::ReadSpan;
use crate::consistency::{CATALOG, OPAQUE};
use crate::protocol::tags::frontend::{
    BIND_TAG, EXECUTE_TAG, FUNCTION_CALL_TAG, PARSE_TAG, QUERY_TAG,
};
use crate::protocol::views::{sql_of, BindView, ParseView};
use crate::protocol::walk;
use crate::router::analysis::Analysis;
use crate::router::fingerprint::{fingerprint_and_lift, leading_hint, Hint};
use crate::router::parameterize::Lift;
use crate::router::plan::{self, Plan, RequestPart, Route, SessionView};
use crate::session::clock::Reads;
use std::sync::Arc;

/// The statements of one request: nearly always one, which then needs no heap.
#[derive(Default)]
struct Analyses {
    first: Option<(Arc<Analysis>, Option<Hint>)>,
    more: Vec<(Arc<Analysis>, Option<Hint>)>,
}

impl Analyses {
    fn push(&mut self, a: (Arc<Analysis>, Option<Hint>)) {
        match self.first {
            None => self.first = Some(a),
            Some(_) => self.more.push(a),
        }
    }

    fn iter(&self) -> impl Iterator<Item = &(Arc<Analysis>, Option<Hint>)> + Clone {
        self.first.iter().chain(&self.more)
    }

    /// The request's statement, when it has exactly one.
    fn single(&self) -> Option<&(Arc<Analysis>, Option<Hint>)> {
        self.first.as_ref().filter(|_| self.more.is_empty())
    }
}

impl Engine {
    /// Decides where a complete request goes, and what a replica must have replayed.
    pub(crate) fn route(&mut self, req: &[u8]) -> (Plan, Needed) {
        let mut analyses = Analyses::default();
        let mut function_call = false;
        let mut executes = false;
        let mut lifted = Lift::Unknown;
        for m in walk::messages(req) {
            let (tag, body) = (m.tag, m.body());
            match tag {
                QUERY_TAG | PARSE_TAG => {
                    if let Some(sql) = sql_of(tag, body) {
                        let cache = &self.shared.parse_cache;
                        let analysis = if tag == QUERY_TAG && self.config.pool.auto_prepare {
                            let (key, lift) = fingerprint_and_lift(sql);
                            lifted = Lift::from_lexed(lift);
                            cache.analyze_keyed(key, sql)
                        } else {
                            cache.analyze(sql)
                        };
                        analyses.push((analysis, leading_hint(sql)));
                    }
                }
                BIND_TAG => {
                    // A statement this request parses is analysed from its Parse: the
                    // session's entry of that name is still the previous one.
                    let bound = BindView::new(body).filter(|b| {
                        !walk::messages(req).any(|m| {
                            m.tag == PARSE_TAG
                                && ParseView::new(m.body()).is_some_and(|p| p.name == b.statement)
                        })
                    });
                    if let Some(a) =
                        bound.and_then(|b| self.session.statements.analysis_of(b.statement))
                    {
                        analyses.push((a, None));
                    }
                }
                FUNCTION_CALL_TAG => function_call = true,
                EXECUTE_TAG => executes = true,
                _ => {}
            }
        }
        let query = req.first() == Some(&QUERY_TAG);
        self.request_executes = executes || query;
        self.routed = match analyses.single() {
            Some((a, _)) if query => Some(a.clone()),
            _ => None,
        };
        let lifted = if self.routed.is_some() {
            lifted
        } else {
            Lift::Unknown
        };
        // One statement, the usual request, is planned without building a Vec.
        let one: [RequestPart<'_>; 1];
        let many: Vec<RequestPart<'_>>;
        let parts: &[RequestPart<'_>] = match analyses.single() {
            Some((a, h)) if !function_call => {
                one = [RequestPart::Sql(a, *h)];
                &one
            }
            _ => {
                many = analyses
                    .iter()
                    .map(|(a, h)| RequestPart::Sql(a, *h))
                    .chain(function_call.then_some(RequestPart::FunctionCall))
                    .collect();
                &many
            }
        };
        let view = SessionView {
            route_override: self.session.route_override,
            held: self.session.holds_server(),
        };
        let topo = self.shared.topology.load();
        let p = plan::plan(
            parts,
            &view,
            topo.has_usable_replica(),
            &self.config.routing,
        );
        self.shared.counters.query(p.route, p.reason);
        if p.route == Route::Primary {
            return (
                p,
                Needed {
                    lifted,
                    ..Needed::default()
                },
            );
        }
        let min_position = self.min_position_of(analyses.iter().map(|(a, _)| a));
        // A commit of a table it reads is still being captured: the position is asked
        // again while the read waits.
        let recheck = (min_position == UNREACHABLE)
            .then(|| analyses.iter().map(|(a, _)| a.clone()).collect());
        let fleet = self.fleet_reads(analyses.iter().map(|(a, _)| a));
        (
            p,
            Needed {
                min_position,
                recheck,
                lifted,
                fleet,
            },
        )
    }

    /// The replayed position a read of these statements needs, by the session's mode.
    pub(crate) fn min_position_of<'a>(
        &self,
        analyses: impl Iterator<Item = &'a Arc<Analysis>> + Clone,
    ) -> u64 {
        let (clock, db) = (&self.shared.table_clock, self.session.database.as_str());
        let mode = self.session.consistency;
        let own = &self.session.clock;
        // What else the read may see matters only where a position could bound it.
        let span = if mode == ConsistencyMode::Strict || own.has_written() {
            self.read_span(analyses.clone())
        } else {
            ReadSpan::Tables(Vec::new())
        };
        let named = || {
            analyses
                .clone()
                .flat_map(|a| a.reads())
                .map(|t| t.name.as_str())
        };
        let reads = |t: &str| {
            named().any(|r| r.eq_ignore_ascii_case(t))
                || matches!(&span, ReadSpan::Tables(extra) if extra.iter().any(|e| e == t))
        };
        let own_reads = match &span {
            ReadSpan::Tables(_) => Reads::Tables(&reads),
            ReadSpan::Any => Reads::Any,
        };
        consistency::need::min_position(
            mode,
            || own.position(own_reads, self.config.consistency.max_lag_ms),
            || clock.catalog(db),
            || match &span {
                ReadSpan::Any => clock.max_all(db),
                ReadSpan::Tables(extra) => {
                    let extra = extra.iter().map(String::as_str);
                    clock.max_of(db, named().chain(extra).chain([CATALOG, OPAQUE]))
                }
            },
        )
    }

    /// What a read may see besides the tables it names: the tables of the database's
    /// own functions it calls, from the catalog model; any table when it calls one the
    /// model cannot follow, or reads a view or policy that runs one, or there is no
    /// current model to tell. A view or policy created after a write comes with a
    /// catalog position past that write, which every read needs.
    pub(crate) fn read_span<'a>(
        &self,
        analyses: impl Iterator<Item = &'a Arc<Analysis>> + Clone,
    ) -> ReadSpan {
        let calls = || analyses.clone().flat_map(|a| a.calls());
        let shared = &self.shared;
        let opaque_reads = shared.reach.any_opaque_reads();
        let has_calls = calls().next().is_some();
        // The usual read: no model lookup.
        if !has_calls && !opaque_reads {
            return ReadSpan::Tables(Vec::new());
        }
        let db = self.session.database.as_str();
        match shared
            .reach
            .current(db, &shared.table_clock, &self.pool.pool)
        {
            Some(l) => {
                let named = analyses
                    .clone()
                    .flat_map(|a| a.reads())
                    .map(|t| t.name.as_str());
                l.reach.reads(named, calls())
            }
            None => ReadSpan::Any,
        }
    }
}

/// What a replica must have replayed for a read, and what routing learnt on the way.
#[derive(Default)]
pub(crate) struct Needed {
    pub min_position: u64,
    /// The read's analyses, kept while the position is UNREACHABLE (a commit being
    /// captured) to ask again as the read waits.
    pub(crate) recheck: Option<Vec<Arc<Analysis>>>,
    /// For a request that is one Query (with auto_prepare on): its parameterised form,
    /// found in the same lexer pass as its fingerprint.
    pub lifted: Lift,
    /// In a fleet, what the read must catch up on before a replica may serve it.
    pub(crate) fleet: Option<FleetReads>,
}
