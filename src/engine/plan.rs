//! Routing a complete client request: what its SQL does (through the parse cache), the
//! session's overrides and the topology go into the pure router; the Plan picks a node.
//! Session-level SETs seen here are remembered so they follow the client.

use super::checkout::{give_back, CheckoutError, Server, Session};
use crate::admin::counters::ReadDecision;
use crate::backend::{BackendError, ConnectSpec};
use crate::config::PoolMode;
use crate::config::{ConsistencyMode, LagSource};
use crate::consistency::clock::UNREACHABLE;
use crate::consistency::lsn;
use crate::consistency::{self, LagBudget};
use crate::protocol::tags::frontend::{
    BIND_TAG, EXECUTE_TAG, FUNCTION_CALL_TAG, PARSE_TAG, QUERY_TAG,
};
use crate::protocol::views::{sql_of, BindView};
use crate::protocol::walk;
use crate::router::analysis::{Analysis, SetStmt};
use crate::router::fingerprint::{fingerprint_and_lift, leading_hint, Hint};
use crate::router::parameterize::Parameterized;
use crate::router::plan::{self, Plan, RequestPart, Route, RouteOverride, SessionView};
use crate::router::text::contains_ci;
use crate::topology::balancer::Draw;
use crate::topology::{choose, Choice, Node, ReadNeed, Topology};
use deadpool::managed::PoolError;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use tokio::sync::Notify;

/// Whether a server error means the node, not the request, is the problem.
fn node_unavailable(e: &BackendError) -> bool {
    match e {
        BackendError::Server { code, .. } => {
            code.starts_with("57P") || code.starts_with("08") || code == "53300"
        }
        _ => true,
    }
}

/// The node's failure, when a checkout failed because of the node: opening a connection,
/// or bringing one to the client's parameters (its SET meets a connection the server
/// dropped, and so did the one taken instead: see checkout_unwatched). The request has
/// not been sent, so another node may take it. None for the client's own error (a bad
/// parameter value).
fn node_failure(e: &CheckoutError) -> Option<&BackendError> {
    match e {
        CheckoutError::Pool(PoolError::Backend(e)) | CheckoutError::Params(e) => {
            node_unavailable(e).then_some(e)
        }
        _ => None,
    }
}

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

    fn iter(&self) -> impl Iterator<Item = &(Arc<Analysis>, Option<Hint>)> {
        self.first.iter().chain(&self.more)
    }

    /// The request's statement, when it has exactly one.
    fn single(&self) -> Option<&(Arc<Analysis>, Option<Hint>)> {
        self.first.as_ref().filter(|_| self.more.is_empty())
    }
}

impl Session {
    /// Decides where a complete request goes, and what a replica must have replayed.
    pub(crate) fn route(&mut self, req: &[u8]) -> (Plan, Needed) {
        let mut analyses = Analyses::default();
        let mut function_call = false;
        let mut executes = false;
        let mut lifted = None;
        for m in walk::messages(req) {
            let (tag, body) = (m.tag, m.body());
            match tag {
                QUERY_TAG | PARSE_TAG => {
                    if let Some(sql) = sql_of(tag, body) {
                        let cache = &self.shared.parse_cache;
                        let analysis = if tag == QUERY_TAG && self.config.pool.auto_prepare {
                            let (key, lift) = fingerprint_and_lift(sql);
                            lifted = Some(lift);
                            cache.analyze_keyed(key, sql)
                        } else {
                            cache.analyze(sql)
                        };
                        analyses.push((analysis, leading_hint(sql)));
                    }
                }
                BIND_TAG => {
                    if let Some(a) =
                        BindView::new(body).and_then(|b| self.statements.analysis_of(b.statement))
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
        let lifted = lifted.filter(|_| self.routed.is_some());
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
            route_override: self.route_override,
            held: self.mode == PoolMode::Session || self.pinned.is_some(),
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
        (
            p,
            Needed {
                min_position,
                recheck,
                lifted,
            },
        )
    }

    /// The replayed position a read of these statements needs, by the session's mode.
    fn min_position_of<'a>(&self, analyses: impl Iterator<Item = &'a Arc<Analysis>>) -> u64 {
        consistency::need::min_position(
            self.consistency,
            || self.clock.position(self.config.consistency.max_lag_ms),
            || {
                self.shared.table_clock.max_of(
                    &self.database,
                    analyses.flat_map(|a| a.reads()).map(|t| t.name.as_str()),
                )
            },
        )
    }

    /// How this request picks among replicas: the client's fixed turn with sticky reads,
    /// else a fresh draw; `advance` moves the shared rotation on.
    pub(crate) fn draw(&self, advance: bool) -> Draw {
        match self.read_turn {
            Some(turn) => Draw::Client {
                turn,
                rand01: self.read_draw,
            },
            None if advance => Draw::Next {
                rand01: rand::random(),
            },
            None => Draw::Same {
                rand01: rand::random(),
            },
        }
    }

    /// Answers a simple Query made only of `SET/RESET pgwarden.*` itself: these are
    /// the proxy's settings (and `primary` is a reserved word PostgreSQL would reject
    /// unquoted). Returns false when the request is anything else.
    /// Cheap pre-check for answer_proxy_settings.
    pub(crate) fn is_proxy_settings(&self, req: &[u8]) -> bool {
        req.first() == Some(&QUERY_TAG) && contains_ci(req, b"pgwarden.")
    }

    pub(crate) async fn answer_proxy_settings(&mut self, req: &[u8]) -> std::io::Result<bool> {
        if !self.is_proxy_settings(req) {
            return Ok(false);
        }
        let Some(sql) = walk::single(req).and_then(|m| sql_of(QUERY_TAG, m.body())) else {
            return Ok(false);
        };
        let a = self.shared.parse_cache.analyze(sql);
        let ours = |s: &crate::router::analysis::StatementInfo| match &s.set {
            Some(SetStmt::Set { name, .. }) | Some(SetStmt::Reset { name }) => {
                name.to_ascii_lowercase().starts_with("pgwarden.")
            }
            _ => false,
        };
        if a.statements.is_empty() || !a.statements.iter().all(ours) {
            return Ok(false);
        }
        // Only pgwarden.* settings here: nothing for the server to confirm.
        self.note_session_effects(&a, &mut Vec::new());
        for s in &a.statements {
            let tag = if matches!(s.set, Some(SetStmt::Reset { .. })) {
                "RESET"
            } else {
                "SET"
            };
            crate::protocol::to_client::command_complete(&mut self.out, tag);
        }
        crate::protocol::to_client::ready_for_query(&mut self.out, b'I');
        self.flush_out().await?;
        Ok(true)
    }

    /// Notes what a statement does to the session: it may pin the client to its
    /// connection; session-level SETs are remembered (applied once the server confirms
    /// them); `SET pgwarden.route` acts at once.
    pub(crate) fn note_session_effects(&mut self, a: &Analysis, sets: &mut Vec<SetStmt>) {
        if self.pinned.is_none() {
            if let Some(pin) = a.pins() {
                tracing::debug!(?pin, "client pinned to its server connection");
                self.pinned = Some(pin);
            }
        }
        for s in &a.statements {
            match &s.set {
                Some(SetStmt::Set {
                    name,
                    value,
                    local: false,
                }) if name.eq_ignore_ascii_case("pgwarden.route") => {
                    self.route_override =
                        match value.trim_matches('\'').to_ascii_lowercase().as_str() {
                            "primary" => RouteOverride::Primary,
                            "replica" => RouteOverride::Replica,
                            _ => RouteOverride::Auto,
                        };
                }
                Some(SetStmt::Reset { name }) if name.eq_ignore_ascii_case("pgwarden.route") => {
                    self.route_override = RouteOverride::Auto;
                }
                Some(SetStmt::Set {
                    name,
                    value,
                    local: false,
                }) if name.eq_ignore_ascii_case("pgwarden.consistency") => {
                    self.consistency = match value.trim_matches('\'').to_ascii_lowercase().as_str()
                    {
                        "session" => ConsistencyMode::Session,
                        "eventual" => ConsistencyMode::Eventual,
                        _ => ConsistencyMode::Strict,
                    };
                }
                Some(SetStmt::Reset { name })
                    if name.eq_ignore_ascii_case("pgwarden.consistency") =>
                {
                    self.consistency = self.config.consistency.mode;
                }
                Some(SetStmt::Set { local: true, .. }) | None => {}
                Some(other) => sets.push(other.clone()),
            }
        }
    }

    /// Applies remembered SETs to the session once the server has committed them, and
    /// records that this server now carries them.
    pub(crate) fn settle_sets(&mut self, server: &mut Server, sets: Vec<SetStmt>, committed: bool) {
        if sets.is_empty() || !committed {
            return;
        }
        for s in sets {
            match s {
                SetStmt::Set { name, value, .. } => {
                    // Kept as SQL text, the way it is replayed.
                    let name = name.to_ascii_lowercase();
                    match self
                        .params
                        .iter_mut()
                        .find(|(n, _)| n.eq_ignore_ascii_case(&name))
                    {
                        Some(slot) => slot.1 = value,
                        None => self.params.push((name, value)),
                    }
                }
                SetStmt::Reset { name } => {
                    self.params.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
                    // A startup value is the session default PostgreSQL resets to.
                    if let Some((n, v)) = self
                        .startup_params
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(&name))
                    {
                        self.params
                            .push((n.clone(), crate::backend::conn::quote_literal(v)));
                    }
                }
                SetStmt::ResetAll => {
                    self.params = self
                        .startup_params
                        .iter()
                        .map(|(n, v)| (n.clone(), crate::backend::conn::quote_literal(v)))
                        .collect();
                    // The server went back to its own defaults, startup values included.
                    server.applied.clear();
                    return;
                }
            }
        }
        server.applied = self.params.clone();
    }

    /// Checks out a server for a plan. Replica plans go to a replica that has replayed
    /// `min_position` and is within the lag budget, nearest first, then by the balancer;
    /// when none qualifies the read waits up to `consistency.max_wait_ms` for one to catch
    /// up, then goes to the primary. Replicas that fail to connect are banned and skipped.
    /// A cancel while the read waits is answered at once (CheckoutError::Canceled).
    pub(crate) async fn checkout_for(
        &mut self,
        plan: &Plan,
        needed: &Needed,
        excluded: &[String],
    ) -> Result<(Server, Arc<Node>), CheckoutError> {
        // While a read waits for a replica to catch up, the session answers the client's
        // cancel itself: nothing has run yet (replay probes are the proxy's own).
        let mut cancelled: Option<Arc<Notify>> = None;
        let got = self
            .checkout_waiting(plan, needed, excluded, &mut cancelled)
            .await;
        if got.is_err() && cancelled.is_some() {
            self.stop_answering_cancel();
        }
        got
    }

    async fn checkout_waiting(
        &mut self,
        plan: &Plan,
        needed: &Needed,
        excluded: &[String],
        cancelled: &mut Option<Arc<Notify>>,
    ) -> Result<(Server, Arc<Node>), CheckoutError> {
        let topo = self.shared.topology.load_full();
        if plan.route == Route::Replica {
            let cfg = self.config.clone();
            let choice = Choice::from_config(&cfg, true);
            let mut need = LagBudget::of(&cfg.consistency).with(needed.min_position);
            let mut tried: Vec<String> = excluded.to_vec();
            let deadline = Instant::now() + Duration::from_millis(cfg.consistency.max_wait_ms);
            let mut waited = false;
            // Replicas asked in this round and found behind; the next probe asks another.
            let mut probed: Vec<String> = Vec::new();
            loop {
                // Registered before looking, so a sample published in between wakes us.
                let changed = topo.lag_changed.notified();
                if let Some(analyses) = needed.recheck.as_ref() {
                    if need.min_position == UNREACHABLE {
                        need.min_position = self.min_position_of(analyses.iter());
                    }
                }
                let draw = self.draw(self.request_executes);
                let chosen = choose(&topo, &self.shared.balancer, choice, &need, &tried, draw);
                if let Some(node) = chosen {
                    let node = node.clone();
                    match self.checkout_node(&node).await {
                        Ok(s) => {
                            let s = self.unless_cancelled(s, cancelled.as_deref())?;
                            self.shared.counters.read(if waited {
                                ReadDecision::Waited
                            } else {
                                ReadDecision::Replica
                            });
                            return Ok((s, node));
                        }
                        Err(e) => match node_failure(&e) {
                            Some(down) => {
                                node.ban(topo.now_ms(), cfg.health.ban_ms, &down.to_string());
                                tried.push(node.name.clone());
                                continue;
                            }
                            None => return Err(e),
                        },
                    }
                }
                let now = Instant::now();
                if now >= deadline || !topo.has_usable_replica() {
                    break;
                }
                waited = true;
                let cancel = cancelled
                    .get_or_insert_with(|| self.answer_cancel())
                    .clone();
                // The monitor samples every lag_interval_ms, usually long after a replica
                // has replayed a fresh commit: ask one directly meanwhile.
                // Boxed, as waiting is rare: see stay_pinned.
                if let Some((s, node)) =
                    Box::pin(self.probe_replay(&topo, &need, &tried, &mut probed)).await
                {
                    self.cancel_goes_to(&s);
                    let s = self.unless_cancelled(s, Some(&cancel))?;
                    self.shared.counters.read(ReadDecision::Waited);
                    return Ok((s, node));
                }
                let pause = (deadline - Instant::now()).min(PROBE_PAUSE);
                tokio::select! {
                    biased;
                    _ = cancel.notified() => return Err(CheckoutError::Canceled),
                    _ = tokio::time::timeout(pause, changed) => {}
                }
            }
            self.shared.counters.read(ReadDecision::PrimaryFallback);
        }
        let primary = topo.primary().expect("config has a primary").clone();
        let s = self.checkout_node(&primary).await?;
        let s = self.unless_cancelled(s, cancelled.as_deref())?;
        Ok((s, primary))
    }

    /// The server just taken for the read (the client's cancel already points at it),
    /// unless a cancel reached the session while the read waited: then it goes back.
    /// Pointed first, then checked, so a cancel either left its permit or goes to the
    /// server.
    fn unless_cancelled(
        &mut self,
        server: Server,
        waited: Option<&Notify>,
    ) -> Result<Server, CheckoutError> {
        if waited.is_some_and(cancel_came) {
            self.let_go(server);
            return Err(CheckoutError::Canceled);
        }
        Ok(server)
    }

    /// Asks the replica this read would use, were it not behind, how far it has
    /// replayed; returns its connection when that covers the read.
    async fn probe_replay(
        &mut self,
        topo: &Topology,
        need: &ReadNeed,
        tried: &[String],
        probed: &mut Vec<String>,
    ) -> Option<(Server, Arc<Node>)> {
        // Time-based sources have no position to ask for; a pending commit has none yet.
        if self.config.consistency.lag_source != LagSource::Postgres
            || need.min_position == 0
            || need.min_position == UNREACHABLE
        {
            return None;
        }
        let budget_only = ReadNeed {
            min_position: 0,
            ..*need
        };
        let choice = Choice::from_config(&self.config, false);
        let balancer = &self.shared.balancer;
        let mut skip: Vec<String> = tried.iter().chain(probed.iter()).cloned().collect();
        let draw = self.draw(false);
        let mut node = choose(topo, balancer, choice, &budget_only, &skip, draw);
        if node.is_none() && !probed.is_empty() {
            // All were asked: start another round.
            probed.clear();
            skip.truncate(tried.len());
            node = choose(topo, balancer, choice, &budget_only, &skip, draw);
        }
        let node = node?.clone();
        probed.push(node.name.clone());
        // The client's cancel stays with the session meanwhile (see checkout_for).
        let mut server = self.checkout_node_unwatched(&node).await.ok()?;
        let replayed = match server
            .query_row_prepared("pgw_i_replayed", REPLAY_SQL)
            .await
        {
            Ok(row) => row.first().cloned().flatten().and_then(|v| lsn::parse(&v)),
            Err(_) => None,
        };
        if let Some(pos) = replayed {
            node.runtime.observe_position(pos);
            if pos >= need.min_position {
                return Some((server, node));
            }
        }
        // Not let_go: the client's cancel target stays the session's.
        give_back(server);
        None
    }

    /// Checks out a server on `node` for the client's request (its cancel goes there).
    pub(crate) async fn checkout_node(
        &mut self,
        node: &Arc<Node>,
    ) -> Result<Server, CheckoutError> {
        let server = self.checkout_node_unwatched(node).await?;
        self.cancel_goes_to(&server);
        Ok(server)
    }

    /// Checks out a server on `node` for the proxy's own use (see checkout_unwatched).
    pub(crate) async fn checkout_node_unwatched(
        &mut self,
        node: &Arc<Node>,
    ) -> Result<Server, CheckoutError> {
        let cfg = &self.config;
        let entry = self
            .shared
            .pools
            .get(&self.database, &self.user.name, &node.name, || {
                ConnectSpec {
                    node: node.name.clone(),
                    host: node.host.clone(),
                    port: node.port,
                    user: self.user.server_user.clone(),
                    password: self.user.server_password.clone(),
                    database: self.database.clone(),
                    tls: cfg.server_tls,
                    connect_timeout: Duration::from_millis(cfg.pool.connect_timeout_ms),
                    prepared_capacity: cfg.pool.prepared_statements_per_server,
                    application_name: "pgwarden",
                }
            });
        self.checkout_unwatched(&entry.pool).await
    }
}

/// What a replica must have replayed for a read, and what routing learnt on the way.
#[derive(Default)]
pub(crate) struct Needed {
    pub min_position: u64,
    /// The read's analyses, kept while the position is UNREACHABLE (a commit being
    /// captured) to ask again as the read waits.
    recheck: Option<Vec<Arc<Analysis>>>,
    /// For a request that is one Query (with auto_prepare on): its parameterised form,
    /// found in the same lexer pass as its fingerprint. Some(None): it has none.
    pub lifted: Option<Option<Parameterized>>,
}

/// Whether a cancel left its permit in `cancelled` (polled once, never waits).
fn cancel_came(cancelled: &Notify) -> bool {
    let came = std::pin::pin!(cancelled.notified());
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    came.poll(&mut cx).is_ready()
}

/// Between two probes of a replica that has not yet replayed what a read needs.
const PROBE_PAUSE: Duration = Duration::from_millis(5);

const REPLAY_SQL: &str = "SELECT pg_last_wal_replay_lsn()::text";

#[cfg(test)]
mod tests {
    #[test]
    fn a_failed_set_on_a_dropped_connection_is_the_nodes_failure() {
        use super::{node_failure, BackendError, CheckoutError, PoolError};
        let eof = || BackendError::Io(std::io::ErrorKind::UnexpectedEof.into());
        let server = |code: &str| BackendError::Server {
            code: code.into(),
            message: String::new(),
            raw: Default::default(),
        };
        assert!(node_failure(&CheckoutError::Params(eof())).is_some());
        assert!(node_failure(&CheckoutError::Params(server("57P01"))).is_some());
        assert!(node_failure(&CheckoutError::Pool(PoolError::Backend(eof()))).is_some());
        // The client's own bad value for a parameter is its error, on any node.
        assert!(node_failure(&CheckoutError::Params(server("22023"))).is_none());
        assert!(node_failure(&CheckoutError::Canceled).is_none());
    }
}
