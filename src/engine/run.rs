//! `Engine::run`, the one function that sees every step of a complete request: a local
//! answer, or the plan, then a shared read lane or a checkout, the exchange with the
//! server, and what follows it; a read that fails before any answer reached the client
//! runs again elsewhere (see exchange::progress::Retry).

use super::plan::Needed;
use super::retry::{Flow, Retry};
use super::{CheckoutError, Engine};
use crate::config::Role;
use crate::protocol::tags::frontend::{FUNCTION_CALL_TAG, QUERY_TAG, SYNC_TAG};
use crate::protocol::to_client;
use crate::router::plan::{Plan, Route};
use bytes::BytesMut;

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The client has its answer; read its next request.
    Answered,
    /// The request failed before a server took it, in the middle of an extended batch:
    /// the client's messages up to its next Sync are skipped, as PostgreSQL does.
    SkipToSync,
    ClientGone,
}

impl Engine {
    /// Runs one complete client request (`tag` is its last message's type).
    pub(crate) async fn run(&mut self, req: BytesMut, tag: u8) -> anyhow::Result<Outcome> {
        // Boxed, like every rare path here, to keep a request's future small.
        if self.is_proxy_settings(&req) && Box::pin(self.answer_proxy_settings(&req)).await? {
            return Ok(Outcome::Answered);
        }
        // Read before planning: a fill must not be kept past a change its plan missed.
        let mut stamp = self
            .shared
            .cache
            .as_ref()
            .map(|_| self.shared.table_clock.stamp());
        let (plan, mut needed) = self.route(&req);
        let mut probe = stamp.and_then(|_| self.cache_probe(&req, tag));
        if self.shared.bus.is_some() && (needed.fleet.is_some() || probe.is_some()) {
            Box::pin(self.fleet_catch_up(&mut needed, &mut probe, &mut stamp)).await;
        }
        if let (Some(probe), Some(stamp)) = (probe, stamp) {
            if let Some(hit) = self.cache_lookup(probe, stamp, &mut needed) {
                self.out.extend_from_slice(&hit);
                self.flush_out().await?;
                return Ok(Outcome::Answered);
            }
        }
        let outcome = self.run_planned(plan, needed, req, tag).await;
        if self.fill.is_some() {
            match outcome {
                Ok(Outcome::Answered) => self.cache_finish(),
                _ => self.fill = None,
            }
        }
        outcome
    }

    /// Runs one planned request.
    async fn run_planned(
        &mut self,
        plan: Plan,
        mut needed: Needed,
        req: BytesMut,
        tag: u8,
    ) -> anyhow::Result<Outcome> {
        // Only a complete request that has not yet been answered can be replayed: on a
        // replica whenever its server fails first (a read), on the primary only when the
        // server said it was shutting down before doing anything (it never ran).
        let complete = matches!(tag, QUERY_TAG | SYNC_TAG);
        let retry = Retry {
            going_away: complete,
            lost: complete && plan.route == Route::Replica,
        };
        if let Some(reply) = self.lane_read(&plan, &mut needed, &req, tag).await {
            self.out.unsplit(reply);
            self.flush_out().await?;
            return Ok(Outcome::Answered);
        }
        let mut excluded: Vec<String> = Vec::new();
        let mut req = req;
        let mut attempts = 0;
        // A replica's pooled connection lost under a read once, without judging the node.
        let mut forgiven = false;
        loop {
            attempts += 1;
            let retry = if attempts < 4 {
                retry
            } else {
                Retry::default()
            };
            let (server, node) = match self.checkout_for(&plan, &needed, &excluded).await {
                Ok(s) => s,
                Err(e) => return self.checkout_failed(e, tag).await,
            };
            let copy = (retry.going_away || retry.lost).then(|| req.clone());
            self.attached_route = if node.role == Role::Primary {
                Route::Primary
            } else {
                Route::Replica
            };
            if self.session.holds_server() {
                return Box::pin(self.held(server, req))
                    .await
                    .map(|_| Outcome::ClientGone);
            }
            node.runtime.begin_query();
            let lifted = std::mem::take(&mut needed.lifted);
            let pooled = super::checkout::pooled(&server);
            let flow = self.attached_until_idle(server, req, retry, lifted).await;
            node.runtime.end_query();
            match flow? {
                Flow::Idle => return Ok(Outcome::Answered),
                Flow::ClientGone => return Ok(Outcome::ClientGone),
                // A pooled connection can die alone (a terminated backend, an idle
                // timeout) after the pool's idle check passed it: the read runs again on
                // the same node, on another connection, and only a second loss bans it.
                Flow::Retry { lost: true } if pooled && !forgiven => {
                    forgiven = true;
                    metrics::counter!("pgwarden_request_retries_total").increment(1);
                    req = copy.expect("retry is only offered for retryable requests");
                }
                Flow::Retry { .. } => {
                    if node.role == Role::Replica {
                        let topo = self.shared.topology.load();
                        node.ban(
                            topo.now_ms(),
                            self.config.health.ban_ms,
                            "server went away before answering",
                        );
                        excluded.push(node.name.clone());
                    }
                    metrics::counter!("pgwarden_request_retries_total").increment(1);
                    req = copy.expect("retry is only offered for retryable requests");
                }
            }
        }
    }

    /// Reports a failed checkout.
    async fn checkout_failed(&mut self, e: CheckoutError, tag: u8) -> anyhow::Result<Outcome> {
        if matches!(e, CheckoutError::Canceled) {
            tracing::debug!("request cancelled before it started (waiting for a server)");
        } else {
            tracing::warn!(error = %e, "server checkout failed");
        }
        let (code, message, raw) = e.client_message();
        let ready = matches!(tag, QUERY_TAG | SYNC_TAG | FUNCTION_CALL_TAG);
        match raw {
            Some(raw) => {
                self.out.unsplit(raw);
                if ready {
                    to_client::ready_for_query(&mut self.out, b'I');
                }
                self.flush_out().await?;
            }
            None => self.send_error("ERROR", &code, &message, ready).await?,
        }
        Ok(if ready {
            Outcome::Answered
        } else {
            Outcome::SkipToSync
        })
    }
}
