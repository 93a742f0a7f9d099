//! The request loop of a client in transaction pooling: buffer a request until it is
//! complete and hand it to `Engine::run`; and the ends of an attached server: held for
//! the session (session mode, a pinned client), or given back once idle.

use super::exchange::Exchange;
use super::retry::{Flow, Retry};
use super::run::Outcome;
use super::{Engine, Server};
use crate::protocol::tags::frontend::{
    self as tags, COPY_DATA_TAG, COPY_DONE_TAG, COPY_FAIL_TAG, SYNC_TAG, TERMINATE_TAG,
};
use crate::protocol::{sqlstate, to_client};
use crate::router::parameterize::Lift;
use bytes::BytesMut;

impl Engine {
    /// Serves requests until the client leaves, checking out a server per request
    /// (transaction mode; session mode goes to `held` from the login instead).
    pub(crate) async fn request_loop(&mut self) -> anyhow::Result<()> {
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
                TERMINATE_TAG => return Ok(()),
                // CopyData/Done/Fail outside COPY are dropped, as PostgreSQL does.
                COPY_DATA_TAG | COPY_DONE_TAG | COPY_FAIL_TAG => continue,
                t if !tags::is_valid(t) => return Err(Box::pin(self.protocol_violation(t)).await),
                _ => {}
            }
            if skip_to_sync {
                if tag == SYNC_TAG {
                    skip_to_sync = false;
                    to_client::ready_for_query(&mut self.out, b'I');
                    Box::pin(self.flush_out()).await?;
                }
                continue;
            }
            request.unsplit(frame.data);
            // A client streaming Parse/Bind without Sync is bounded like one message.
            if !tags::completes_request(tag) && request.len() < self.config.limits.max_message_bytes
            {
                continue;
            }
            self.client.shrink_if_idle();
            self.refresh_config();
            let req = std::mem::take(&mut request);
            // Boxed: an idle client's task then holds only this loop's small state, not
            // the relay's (the largest future in a session).
            match Box::pin(self.run(req, tag)).await? {
                Outcome::Answered => {}
                Outcome::SkipToSync => skip_to_sync = true,
                Outcome::ClientGone => return Ok(()),
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

    /// Session mode, or a pinned client: relay until the client leaves.
    pub(crate) async fn held(
        &mut self,
        mut server: Server,
        request: BytesMut,
    ) -> anyhow::Result<()> {
        let mut progress = Exchange::new();
        let flow = self
            .relay(&mut server, &mut progress, request, true, Retry::default())
            .await;
        self.finish(server, &progress).await;
        flow.map(|_| ())
    }

    /// Transaction mode: relay until the server is idle, then give it back.
    pub(crate) async fn attached_until_idle(
        &mut self,
        mut server: Server,
        request: BytesMut,
        retry: Retry,
        lifted: Lift,
    ) -> anyhow::Result<Flow> {
        let mut progress = Exchange::new();
        progress.lifted = lifted;
        let flow = self
            .relay(&mut server, &mut progress, request, false, retry)
            .await;
        match flow {
            Ok(Flow::Idle) if self.session.pinned.is_some() => {
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
        mut progress: Exchange,
    ) -> anyhow::Result<Flow> {
        if let Some(pending) = progress.commit.take() {
            self.capture_commit(&mut server, pending, false).await;
        }
        self.held(server, BytesMut::new())
            .await
            .map(|_| Flow::ClientGone)
    }

    /// Leaves a server the client no longer uses in a reusable state, or discards it.
    async fn finish(&mut self, mut server: Server, progress: &Exchange) {
        // Mid-request the server's state is unknown; an open transaction is rolled back.
        let reusable = progress.quiet()
            && (progress.status() == b'I'
                || (!server.broken && server.run_internal("ROLLBACK").await.is_ok()));
        if !reusable {
            server.broken = true;
        }
        // A connection that carried session state (session mode, or a pinned client)
        // is reset before anyone else gets it.
        let reset = self.session.holds_server();
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
    use crate::engine::plan::Needed;
    use crate::router::plan::Plan;

    /// The size of the future a function returns, without calling it.
    fn returned<A, R>(_: impl FnOnce(A) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    #[test]
    fn rare_paths_stay_out_of_a_requests_future() {
        type S = &'static mut Engine;
        let lane_read = returned(
            |(s, plan, needed, req): (S, &'static Plan, &'static mut Needed, &'static BytesMut)| {
                s.lane_read(plan, needed, req, b'Q')
            },
        );
        let checkout = returned(|(s, pool): (S, &'static ServerPool)| s.checkout_unwatched(pool));
        let attached = returned(|(s, server): (S, Server)| {
            s.attached_until_idle(server, BytesMut::new(), Retry::default(), Lift::Unknown)
        });
        let relay = returned(
            |(s, server, p): (S, &'static mut Server, &'static mut Exchange)| {
                s.relay(server, p, BytesMut::new(), false, Retry::default())
            },
        );
        let finish = returned(|(s, server, p): (S, Server, &'static Exchange)| s.finish(server, p));
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
