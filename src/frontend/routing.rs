//! Routing a complete client request: what its SQL does (through the parse cache), the
//! session's overrides and the topology go into the pure router; the Plan picks a node.
//! Session-level SETs seen here are remembered so they follow the client.

use super::session::{CheckoutError, Server, Session};
use crate::backend::pool::PoolKey;
use crate::backend::{BackendError, ConnectSpec};
use crate::config::PoolMode;
use crate::router::analysis::{Analysis, SetStmt};
use crate::router::fingerprint::leading_hint;
use crate::router::plan::{self, Plan, RequestPart, Route, RouteOverride, SessionView};
use crate::topology::Node;
use deadpool::managed::PoolError;
use std::sync::Arc;
use std::time::Duration;

/// Splits a NUL-terminated string off the front of `b`.
fn cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = b.iter().position(|&c| c == 0)?;
    Some((&b[..end], &b[end + 1..]))
}

/// The SQL text of a Query body or of a Parse body (after the statement name).
fn sql_of(tag: u8, body: &[u8]) -> Option<&str> {
    let text = match tag {
        b'Q' => cstr(body)?.0,
        b'P' => cstr(cstr(body)?.1)?.0,
        _ => return None,
    };
    std::str::from_utf8(text).ok()
}

/// Whether a server error means the node, not the request, is the problem.
fn node_unavailable(e: &BackendError) -> bool {
    match e {
        BackendError::Server { code, .. } => {
            code.starts_with("57P") || code.starts_with("08") || code == "53300"
        }
        _ => true,
    }
}

impl Session {
    /// Decides where a complete request goes.
    pub(super) fn route(&mut self, req: &[u8]) -> Plan {
        let mut analyses: Vec<(Arc<Analysis>, Option<crate::router::fingerprint::Hint>)> =
            Vec::new();
        let mut function_call = false;
        let mut rest = req;
        while rest.len() >= 5 {
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            let (tag, body) = (rest[0], rest.get(5..len + 1).unwrap_or(&[]));
            match tag {
                b'Q' | b'P' => {
                    if let Some(sql) = sql_of(tag, body) {
                        analyses.push((self.shared.parse_cache.analyze(sql), leading_hint(sql)));
                    }
                }
                b'B' => {
                    if let Some(a) = cstr(body)
                        .and_then(|(_, r)| cstr(r))
                        .and_then(|(s, _)| self.statements.analysis_of(s))
                    {
                        analyses.push((a, None));
                    }
                }
                b'F' => function_call = true,
                _ => {}
            }
            rest = rest.get(len + 1..).unwrap_or(&[]);
        }
        let mut parts: Vec<RequestPart<'_>> = analyses
            .iter()
            .map(|(a, h)| RequestPart::Sql(a, *h))
            .collect();
        if function_call {
            parts.push(RequestPart::FunctionCall);
        }
        let view = SessionView {
            route_override: self.route_override,
            held: self.mode == PoolMode::Session || self.pinned.is_some(),
        };
        let topo = self.shared.topology.load();
        let p = plan::plan(
            &parts,
            &view,
            topo.has_usable_replica(),
            &self.shared.config.routing,
        );
        let route = match p.route {
            Route::Primary => "primary",
            Route::Replica => "replica",
        };
        metrics::counter!("pgwarden_queries_total", "route" => route, "reason" => p.reason.label())
            .increment(1);
        p
    }

    /// Answers a simple Query made only of `SET/RESET pgwarden.*` itself: these are
    /// the proxy's settings (and `primary` is a reserved word PostgreSQL would reject
    /// unquoted). Returns false when the request is anything else.
    pub(super) async fn answer_proxy_settings(&mut self, req: &[u8]) -> std::io::Result<bool> {
        if req.first() != Some(&b'Q') || !contains_ci(req, b"pgwarden.") {
            return Ok(false);
        }
        let len = u32::from_be_bytes([req[1], req[2], req[3], req[4]]) as usize;
        if len + 1 != req.len() {
            return Ok(false);
        }
        let Some(sql) = sql_of(b'Q', &req[5..]) else {
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
        self.note_session_effects(&a);
        for s in &a.statements {
            let tag = if matches!(s.set, Some(SetStmt::Reset { .. })) {
                "RESET"
            } else {
                "SET"
            };
            crate::protocol::messages::command_complete(&mut self.out, tag);
        }
        crate::protocol::messages::ready_for_query(&mut self.out, b'I');
        self.flush_out().await?;
        Ok(true)
    }

    /// Notes what a statement does to the session: it may pin the client to its
    /// connection; session-level SETs are remembered (applied once the server confirms
    /// them); `SET pgwarden.route` acts at once.
    pub(super) fn note_session_effects(&mut self, a: &Analysis) {
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
                Some(SetStmt::Set { local: true, .. }) | None => {}
                Some(other) => self.pending_sets.push(other.clone()),
            }
        }
    }

    /// Applies remembered SETs to the session once the server has committed them, and
    /// records that this server now carries them.
    pub(super) fn settle_sets(&mut self, server: &mut Server, committed: bool) {
        if self.pending_sets.is_empty() {
            return;
        }
        let sets = std::mem::take(&mut self.pending_sets);
        if !committed {
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

    /// Checks out a server for a plan: a replica chosen by the balancer (skipping nodes
    /// that fail to connect, which get banned), else the primary.
    pub(super) async fn checkout_for(
        &mut self,
        plan: &Plan,
        excluded: &[String],
    ) -> Result<(Server, Arc<Node>), CheckoutError> {
        let topo = self.shared.topology.load_full();
        if plan.route == Route::Replica {
            let mut tried: Vec<&str> = excluded.iter().map(String::as_str).collect();
            loop {
                let candidates: Vec<&Arc<Node>> = topo
                    .read_candidates(self.shared.config.routing.primary_reads)
                    .into_iter()
                    .filter(|n| !tried.contains(&n.name.as_str()))
                    .collect();
                let Some(node) = self.shared.balancer.pick(
                    self.shared.config.routing.load_balance,
                    &candidates,
                    rand::random(),
                ) else {
                    break;
                };
                match self.checkout_node(node).await {
                    Ok(s) => return Ok((s, node.clone())),
                    Err(CheckoutError::Pool(PoolError::Backend(e))) if node_unavailable(&e) => {
                        node.ban(
                            topo.now_ms(),
                            self.shared.config.health.ban_ms,
                            &e.to_string(),
                        );
                        tried.push(&node.name);
                    }
                    Err(e) => return Err(e),
                }
            }
            metrics::counter!("pgwarden_replica_fallbacks_total").increment(1);
        }
        let primary = topo.primary().expect("config has a primary").clone();
        let s = self.checkout_node(&primary).await?;
        Ok((s, primary))
    }

    async fn checkout_node(&mut self, node: &Arc<Node>) -> Result<Server, CheckoutError> {
        let key = PoolKey {
            database: self.database.clone(),
            user: self.user.name.clone(),
            node: node.name.clone(),
        };
        let cfg = &self.shared.config;
        let entry = self.shared.pools.get(&key, || ConnectSpec {
            node: node.name.clone(),
            host: node.host.clone(),
            port: node.port,
            user: self.user.server_user.clone(),
            password: self.user.server_password.clone(),
            database: self.database.clone(),
            tls: cfg.server_tls,
            connect_timeout: Duration::from_millis(cfg.pool.connect_timeout_ms),
            prepared_capacity: cfg.pool.prepared_statements_per_server,
        });
        self.checkout_from(&entry.pool).await
    }
}

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}
