//! The idle side of a session: buffer a client request until it is complete, route it,
//! check out a server on the chosen node, and hand over to the relay. Reads that fail
//! before any answer reached the client are retried on another node.

use super::checkout::{CheckoutError, Server, Session};
use super::plan::Needed;
use super::relay::{completes_request, valid_client_tag, Flow, Progress, Retry};
use crate::config::PoolMode;
use crate::protocol::{sqlstate, to_client};
use crate::router::parameterize::Parameterized;
use crate::router::plan::{Plan, Route};
use bytes::BytesMut;

impl Session {
    /// Serves requests until the client leaves, checking out a server per request
    /// (transaction mode; session mode goes to `held` from the login instead).
    pub(crate) async fn serve(&mut self) -> anyhow::Result<()> {
        let mut request = BytesMut::new();
        // After a failed checkout in the middle of an extended batch, PostgreSQL's
        // rule applies: skip to the next Sync.
        let mut skip_to_sync = false;
        loop {
            if request.is_empty() {
                // Between requests a client holds no buffers.
                self.client.release_buffer();
                self.out = BytesMut::new();
            }
            let frame = match self.client.read_frame().await {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(e) => return Err(Box::pin(self.frame_error(e)).await),
            };
            let tag = frame.tag;
            match tag {
                b'X' => return Ok(()),
                // CopyData/Done/Fail outside COPY are dropped, as PostgreSQL does.
                b'd' | b'c' | b'f' => continue,
                t if !valid_client_tag(t) => return Err(Box::pin(self.protocol_violation(t)).await),
                _ => {}
            }
            if skip_to_sync {
                if tag == b'S' {
                    skip_to_sync = false;
                    to_client::ready_for_query(&mut self.out, b'I');
                    Box::pin(self.flush_out()).await?;
                }
                continue;
            }
            request.unsplit(frame.data);
            // A client streaming Parse/Bind without Sync is bounded like one message.
            if !completes_request(tag) && request.len() < self.config.limits.max_message_bytes {
                continue;
            }
            self.client.shrink_if_idle();
            self.refresh_config();
            let req = std::mem::take(&mut request);
            // Boxed, like every rare path here, to keep an idle client's task small.
            if self.is_proxy_settings(&req) && Box::pin(self.answer_proxy_settings(&req)).await? {
                continue;
            }
            let (plan, needed) = self.route(&req);
            // Boxed: an idle client's task then holds only this loop's small state, not
            // the relay's (the largest future in a session).
            match Box::pin(self.run_request(plan, needed, req, tag)).await? {
                Some(true) => skip_to_sync = true,
                Some(false) => {}
                None => return Ok(()),
            }
        }
    }

    /// Runs one routed request. Returns None when the client left, Some(skip_to_sync)
    /// otherwise.
    async fn run_request(
        &mut self,
        plan: Plan,
        mut needed: Needed,
        req: BytesMut,
        tag: u8,
    ) -> anyhow::Result<Option<bool>> {
        // Only a complete request that has not yet been answered can be replayed: on a
        // replica whenever its server fails first (a read), on the primary only when the
        // server said it was shutting down before doing anything (it never ran).
        let complete = matches!(tag, b'Q' | b'S');
        let retry = Retry {
            going_away: complete,
            lost: complete && plan.route == Route::Replica,
        };
        if let Some(reply) = self.lane_read(&plan, &mut needed, &req, tag).await {
            self.out.unsplit(reply);
            self.flush_out().await?;
            return Ok(Some(false));
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
                Err(e) => return self.checkout_failed(e, tag).await.map(Some),
            };
            let copy = (retry.going_away || retry.lost).then(|| req.clone());
            self.attached_route = if node.role == crate::config::Role::Primary {
                Route::Primary
            } else {
                Route::Replica
            };
            if self.mode == PoolMode::Session || self.pinned.is_some() {
                return Box::pin(self.held(server, req)).await.map(|_| None);
            }
            node.runtime.begin_query();
            let lifted = needed.lifted.take();
            let pooled = super::checkout::pooled(&server);
            let flow = self.attached_until_idle(server, req, retry, lifted).await;
            node.runtime.end_query();
            match flow? {
                Flow::Idle => return Ok(Some(false)),
                Flow::ClientGone => return Ok(None),
                // A pooled connection can die alone (a terminated backend, an idle
                // timeout) after the pool's idle check passed it: the read runs again on
                // the same node, on another connection, and only a second loss bans it.
                Flow::Retry { lost: true } if pooled && !forgiven => {
                    forgiven = true;
                    metrics::counter!("pgwarden_request_retries_total").increment(1);
                    req = copy.expect("retry is only offered for retryable requests");
                }
                Flow::Retry { .. } => {
                    if node.role == crate::config::Role::Replica {
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

    pub(crate) async fn protocol_violation(&mut self, tag: u8) -> anyhow::Error {
        let msg = format!("invalid frontend message type {tag}");
        let _ = self
            .send_error("FATAL", sqlstate::PROTOCOL_VIOLATION, &msg, false)
            .await;
        anyhow::anyhow!(msg)
    }

    /// Reports a failed checkout; returns whether to skip client messages to the next Sync.
    async fn checkout_failed(&mut self, e: CheckoutError, tag: u8) -> anyhow::Result<bool> {
        if matches!(e, CheckoutError::Canceled) {
            tracing::debug!("request cancelled before it started (waiting for a server)");
        } else {
            tracing::warn!(error = %e, "server checkout failed");
        }
        let (code, message, raw) = e.client_message();
        let ready = matches!(tag, b'Q' | b'S' | b'F');
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
        Ok(!ready)
    }

    /// Session mode, or a pinned client: relay until the client leaves.
    pub(crate) async fn held(
        &mut self,
        mut server: Server,
        request: BytesMut,
    ) -> anyhow::Result<()> {
        let mut progress = Progress::new();
        let flow = self
            .relay(&mut server, &mut progress, request, true, Retry::default())
            .await;
        self.finish(server, &progress).await;
        flow.map(|_| ())
    }

    /// Transaction mode: relay until the server is idle, then give it back.
    async fn attached_until_idle(
        &mut self,
        mut server: Server,
        request: BytesMut,
        retry: Retry,
        lifted: Option<Option<Parameterized>>,
    ) -> anyhow::Result<Flow> {
        let mut progress = Progress::new();
        progress.lifted = lifted;
        let flow = self
            .relay(&mut server, &mut progress, request, false, retry)
            .await;
        match flow {
            Ok(Flow::Idle) if self.pinned.is_some() => {
                return Box::pin(self.stay_pinned(server, progress)).await;
            }
            Ok(Flow::Idle) => match progress.commit.take() {
                // The client has its reply and may send its next request at once.
                Some(pending) => self.capture_detached(server, pending),
                None => self.release(server, false).await,
            },
            _ => Box::pin(self.finish(server, &progress)).await,
        }
        flow
    }

    /// Pinned by the request just answered: keeps the very same connection from now on.
    /// (The paths boxed here and above are rare; inline, their state would be part of,
    /// and copied with, every request's future.)
    async fn stay_pinned(
        &mut self,
        mut server: Server,
        mut progress: Progress,
    ) -> anyhow::Result<Flow> {
        if let Some(pending) = progress.commit.take() {
            self.capture_commit(&mut server, pending, false).await;
        }
        self.held(server, BytesMut::new())
            .await
            .map(|_| Flow::ClientGone)
    }

    /// Leaves a server the client no longer uses in a reusable state, or discards it.
    async fn finish(&mut self, mut server: Server, progress: &Progress) {
        // Mid-request the server's state is unknown; an open transaction is rolled back.
        let reusable = progress.quiet()
            && (progress.status() == b'I'
                || (!server.broken && server.run_internal("ROLLBACK").await.is_ok()));
        if !reusable {
            server.broken = true;
        }
        // A connection that carried session state (session mode, or a pinned client)
        // is reset before anyone else gets it.
        let reset = self.mode == PoolMode::Session || self.pinned.is_some();
        self.release(server, reset).await;
    }
}

#[cfg(test)]
mod footprint {
    //! Every request builds and moves its futures: the rare paths boxed in this module
    //! and in checkout must stay out of them. Sizes are compared with each other, so
    //! the checks hold in debug and release builds alike.
    use super::*;
    use crate::backend::pool::ServerPool;

    /// The size of the future a function returns, without calling it.
    fn returned<A, R>(_: impl FnOnce(A) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    #[test]
    fn rare_paths_stay_out_of_a_requests_future() {
        type S = &'static mut Session;
        let lane_read = returned(
            |(s, plan, needed, req): (S, &'static Plan, &'static mut Needed, &'static BytesMut)| {
                s.lane_read(plan, needed, req, b'Q')
            },
        );
        let checkout = returned(|(s, pool): (S, &'static ServerPool)| s.checkout_unwatched(pool));
        let attached = returned(|(s, server): (S, Server)| {
            s.attached_until_idle(server, BytesMut::new(), Retry::default(), None)
        });
        let relay = returned(
            |(s, server, p): (S, &'static mut Server, &'static mut Progress)| {
                s.relay(server, p, BytesMut::new(), false, Retry::default())
            },
        );
        let finish = returned(|(s, server, p): (S, Server, &'static Progress)| s.finish(server, p));
        println!(
            "lane_read {lane_read} B, checkout {checkout} B, attached {attached} B, \
             relay {relay} B, finish {finish} B"
        );
        // A lane opens with a checkout, boxed.
        assert!(
            lane_read < checkout,
            "lane_read {lane_read} B, checkout {checkout} B"
        );
        // Beyond its relay, a request holds less than a finish (boxed: errors only).
        assert!(
            attached < relay + finish,
            "attached {attached} B, relay {relay} B, finish {finish} B"
        );
    }
}
