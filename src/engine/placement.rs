//! Where a planned request runs: replica reads go to a replica that has replayed what
//! they need (topology::choose), waiting a bounded time for one to catch up and asking
//! one directly meanwhile, else to the primary; a node that fails to connect is banned
//! and another tried.

use super::plan::Needed;
use super::{give_back, CheckoutError, Engine, Server};
use crate::admin::counters::ReadDecision;
use crate::backend::{BackendError, ConnectSpec};
use crate::config::{LagSource, WaitPolicy};
use crate::consistency::clock::UNREACHABLE;
use crate::consistency::wait;
use crate::consistency::{lsn, LagBudget};
use crate::router::plan::{Plan, Route};
use crate::session::clock::now_ms;
use crate::topology::{choose, Choice, Node, ReadNeed, Topology};
use deadpool::managed::PoolError;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
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

impl Engine {
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
            // Waiting could not pay: the primary at once, before any wait.
            let mut at_once = false;
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
                let draw = self.session.draw(self.request_executes);
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
                // The primary answers now rather than after a wait that cannot pay.
                if self.waiting_cannot_pay(&topo, &need) {
                    at_once = !waited;
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
            self.shared.counters.read(if at_once {
                ReadDecision::PrimaryAtOnce
            } else {
                ReadDecision::PrimaryFallback
            });
        }
        let primary = topo.primary().expect("config has a primary").clone();
        let s = self.checkout_node(&primary).await?;
        let s = self.unless_cancelled(s, cancelled.as_deref())?;
        Ok((s, primary))
    }

    /// A position not flushed yet reaches no replica before the primary's next flush;
    /// otherwise the replicas' replay progress tells (see wait_pays).
    pub(crate) fn waiting_cannot_pay(&self, topo: &Topology, need: &ReadNeed) -> bool {
        self.shared.flushes.unflushed(need.min_position) || !self.wait_pays(topo, need)
    }

    /// Whether a replica within the lag budget is estimated to have the read's position
    /// now, or within half a round trip to the primary (a floor of the read's cost
    /// there); always yes with consistency.wait_for_replica: always.
    fn wait_pays(&self, topo: &Topology, need: &ReadNeed) -> bool {
        if self.config.consistency.wait_for_replica == WaitPolicy::Always {
            return true;
        }
        let budget_us = topo.primary().map_or(0, |p| p.runtime.rtt_us() / 2);
        let within_budget = ReadNeed {
            min_position: 0,
            ..*need
        };
        let replicas = topo.eligible(false, &within_budget, &[]);
        let replays = replicas.iter().map(|n| n.runtime.replay());
        wait::wait_pays(replays, need.min_position, now_ms(), budget_us)
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
        let draw = self.session.draw(false);
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
        let entry = self.shared.pools.get(
            &self.session.database,
            &self.session.user.name,
            &node.name,
            || ConnectSpec {
                node: node.name.clone(),
                host: node.host.clone(),
                port: node.port,
                user: self.session.user.server_user.clone(),
                password: self.session.user.server_password.clone(),
                database: self.session.database.clone(),
                tls: cfg.server_tls,
                connect_timeout: Duration::from_millis(cfg.pool.connect_timeout_ms),
                prepared_capacity: cfg.pool.prepared_statements_per_server,
                application_name: "pgwarden",
            },
        );
        self.checkout_unwatched(&entry.pool).await
    }
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
