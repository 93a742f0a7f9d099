//! The relay: drives the exchange with an attached server over the two sockets. It
//! writes what the exchange queued for the server, hands it every message that comes
//! back and every message the client pipelines, batches writes to the client, and
//! stops once the server owes nothing and the pool mode lets it go.

use super::exchange::{Ctx, Exchange, ServerBook};
use super::retry::{node_going_away, Flow, Retry};
use super::{Engine, Server};
use crate::protocol::tags::backend::ERROR_RESPONSE_TAG;
use crate::protocol::tags::frontend::{self as tags, TERMINATE_TAG};
use crate::protocol::{sqlstate, walk};
use bytes::BytesMut;

/// Flush what is queued for one side once it grows past this.
const HIGH_WATER: usize = 64 * 1024;

/// The exchange's view of the engine and of `server`, borrowed field by field so the
/// client's socket and output stay free for the relay.
macro_rules! ctx {
    ($engine:expr, $server:expr) => {{
        let conn = &mut **$server;
        Ctx {
            session: &mut $engine.session,
            config: &$engine.config,
            parse_cache: &$engine.shared.parse_cache,
            routed: &mut $engine.routed,
            server: ServerBook {
                prepared: &mut conn.prepared,
                applied: &mut conn.applied,
                params: &mut conn.params,
            },
        }
    }};
}

impl Engine {
    /// Relays between client and `server` until the server owes nothing and may go
    /// (`hold` false), the client leaves, or (`retry`) the server fails before the
    /// client saw any answer, in which case the request can run elsewhere.
    pub(crate) async fn relay(
        &mut self,
        server: &mut Server,
        x: &mut Exchange,
        first: BytesMut,
        hold: bool,
        retry: Retry,
    ) -> anyhow::Result<Flow> {
        let mut to_server = BytesMut::new();
        let flushed_at_start = self.flushed;
        self.session.statements.attached();
        if let Some(first) = x.send_renamed(first, &mut ctx!(self, server), &mut to_server) {
            for frame in walk::split_frames(first) {
                x.client_frame(frame, &mut ctx!(self, server), &mut to_server);
            }
        }
        // Retrying is only possible while the client has seen nothing of the answer;
        // asked afresh at each use, as any flush in between ends it.
        let untouched = |s: &Self| s.flushed == flushed_at_start;
        loop {
            if !to_server.is_empty() {
                let sent = async {
                    server.io.write_all(&to_server).await?;
                    server.io.flush().await
                }
                .await;
                if let Err(e) = sent {
                    if retry.lost && untouched(self) {
                        return Ok(self.retry(server, true));
                    }
                    return Err(self.server_lost(server, e.to_string()).await);
                }
                to_server.clear();
            }
            // Replies the proxy owes before the server's next one (e.g. a dropped
            // Parse followed by Flush) go out now.
            x.pipeline.drain_leading_injects(&mut self.out);
            // Holding the server (session mode, a pinned client) the position is read
            // here; otherwise the caller reads it detached once the server is idle.
            if hold && x.commit.is_some() && x.pipeline.is_empty() {
                self.flush_out().await?;
                let pending = x.commit.take().unwrap_or_default();
                self.capture_commit(server, pending, false).await;
            }
            if !hold && x.idle() {
                self.flush_out().await?;
                return Ok(Flow::Idle);
            }
            // Replies the proxy made up (e.g. ParseComplete for a statement the server
            // already has) wait for the server's first answer while the request could
            // still be replayed elsewhere: sent now, they would be sent twice.
            let replayable = (retry.lost || retry.going_away) && untouched(self);
            if !self.out.is_empty() && !server.io.has_buffered_frame() && !replayable {
                self.flush_out().await?;
            }
            // The server first: while its replies are buffered the client's socket need
            // not be polled, and the client has nothing to say until they reach it.
            tokio::select! {
                biased;
                r = server.io.read_frame() => {
                    let frame = match r {
                        Ok(Some(f)) => f,
                        Ok(None) | Err(_) if retry.lost && untouched(self) => return Ok(self.retry(server, true)),
                        Ok(None) => return Err(self.server_lost(server, "server closed the connection".into()).await),
                        Err(e) => return Err(self.server_lost(server, e.to_string()).await),
                    };
                    if (retry.going_away || retry.lost)
                        && untouched(self)
                        && frame.tag == ERROR_RESPONSE_TAG
                        && node_going_away(frame.body())
                    {
                        return Ok(self.retry(server, false));
                    }
                    let captures = self.shared.captures_commits;
                    let committed = x.server_frame(frame, &mut ctx!(self, server), &mut self.out, &mut to_server, captures);
                    if let Some(c) = committed {
                        // Before the client's reply goes out: until the position is
                        // known, no replica is safe for these tables.
                        let reached = self.reached(&c).await;
                        self.commit_acknowledged(c, reached, &mut x.commit);
                    }
                    // In a fleet the reply to a commit waits for its position to reach
                    // Redis (bounded by consistency.fleet_publish_wait_ms); only when
                    // nothing else is in flight, or the client would wait on itself.
                    if x.commit.is_some() && x.pipeline.is_empty() && self.shared.bus.is_some() {
                        let pending = x.commit.take().unwrap_or_default();
                        self.capture_commit(server, pending, true).await;
                    }
                    if self.out.len() >= HIGH_WATER || !server.io.has_buffered_frame() {
                        self.flush_out().await?;
                    }
                    // The commit's position is read once nothing else is in flight on
                    // this connection (the client's reply has already gone out).
                    if hold && x.commit.is_some() && x.pipeline.is_empty() && self.out.is_empty() {
                        let pending = x.commit.take().unwrap_or_default();
                        self.capture_commit(server, pending, false).await;
                    }
                }
                r = self.client.read_frame() => {
                    let mut next = r;
                    // Take everything the client pipelined, within bounds, in one write.
                    loop {
                        let frame = match next {
                            Ok(Some(f)) => f,
                            Ok(None) => return Ok(Flow::ClientGone),
                            Err(e) => return Err(self.frame_error(e).await),
                        };
                        if frame.tag == TERMINATE_TAG {
                            return Ok(Flow::ClientGone);
                        }
                        if !tags::is_valid(frame.tag) {
                            return Err(self.protocol_violation(frame.tag).await);
                        }
                        if tags::completes_request(frame.tag) {
                            self.shared.counters.attached_query(self.attached_route);
                            self.cache_spoil();
                        }
                        x.client_frame(frame, &mut ctx!(self, server), &mut to_server);
                        if to_server.len() >= HIGH_WATER || !self.client.has_buffered_frame() {
                            break;
                        }
                        next = self.client.read_frame().await;
                    }
                }
            }
        }
    }

    /// Gives up on a server that failed before answering; nothing reached the client.
    fn retry(&mut self, server: &mut Server, lost: bool) -> Flow {
        server.broken = true;
        self.out.clear();
        tracing::info!(node = %server.node, lost, "server failed before answering; retrying the request");
        Flow::Retry { lost }
    }

    async fn server_lost(&mut self, server: &mut Server, why: String) -> anyhow::Error {
        server.broken = true;
        tracing::warn!(node = %server.node, error = %why, "server connection lost");
        let _ = self.flush_out().await;
        let msg = format!("server connection lost: {why}");
        let _ = self
            .send_error("FATAL", sqlstate::CONNECTION_FAILURE, &msg, false)
            .await;
        anyhow::anyhow!(msg)
    }
}
