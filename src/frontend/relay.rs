//! The request loop. Idle: buffer client messages until a request is complete (Query,
//! Sync, FunctionCall or Flush), then check out a server. Attached: relay both ways,
//! batching writes, until the server is idle again and the pool mode lets it go.

use super::pipeline::Pipeline;
use super::session::{CheckoutError, Server, Session};
use crate::config::PoolMode;
use crate::protocol::{messages, sqlstate, Frame};
use bytes::BytesMut;

/// Flush what is queued for one side once it grows past this.
const HIGH_WATER: usize = 64 * 1024;

/// What the attached server still owes, and whether it may go back to the pool.
#[derive(Default)]
pub(super) struct Progress {
    /// ReadyForQuery messages still to come (one per Query, Sync, FunctionCall).
    pending: usize,
    /// An extended-protocol batch was sent without its Sync yet.
    open_batch: bool,
    /// COPY in or out in progress.
    copying: bool,
    status: u8,
}

impl Progress {
    fn new() -> Self {
        Progress {
            status: b'I',
            ..Default::default()
        }
    }

    fn sent(&mut self, tag: u8) {
        match tag {
            b'Q' | b'F' => self.pending += 1,
            b'S' => {
                self.pending += 1;
                self.open_batch = false;
            }
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => self.open_batch = true,
            b'c' | b'f' => self.copying = false,
            _ => {}
        }
    }

    fn received(&mut self, tag: u8, body: &[u8]) {
        match tag {
            b'Z' => {
                self.pending = self.pending.saturating_sub(1);
                self.status = body.first().copied().unwrap_or(b'I');
                self.copying = false;
            }
            b'G' | b'H' | b'W' => self.copying = true,
            b'c' => self.copying = false,
            _ => {}
        }
    }

    /// Nothing in flight and no transaction open: the connection may be reused.
    pub(super) fn idle(&self) -> bool {
        self.pending == 0 && !self.open_batch && !self.copying && self.status == b'I'
    }

    /// Nothing in flight, though a transaction may be open.
    pub(super) fn quiet(&self) -> bool {
        self.pending == 0 && !self.open_batch && !self.copying
    }

    pub(super) fn status(&self) -> u8 {
        self.status
    }
}

fn completes_request(tag: u8) -> bool {
    matches!(tag, b'Q' | b'S' | b'F' | b'H')
}

fn valid_client_tag(tag: u8) -> bool {
    matches!(
        tag,
        b'Q' | b'P' | b'B' | b'D' | b'E' | b'C' | b'S' | b'H' | b'F' | b'd' | b'c' | b'f' | b'X'
    )
}

enum Flow {
    /// The server owes nothing and may be released (transaction mode).
    Idle,
    ClientGone,
}

impl Session {
    /// Serves requests until the client leaves. `held` is a server kept for the whole
    /// session (session mode).
    pub(super) async fn serve(&mut self, held: Option<Server>) -> anyhow::Result<()> {
        if let Some(server) = held {
            return self.attached(server, BytesMut::new()).await;
        }
        let mut request = BytesMut::new();
        // After a failed checkout in the middle of an extended batch, PostgreSQL's
        // rule applies: skip to the next Sync.
        let mut skip_to_sync = false;
        loop {
            let frame = match self.client.read_frame().await {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.frame_error(e).await),
            };
            let tag = frame.tag;
            match tag {
                b'X' => return Ok(()),
                // CopyData/Done/Fail outside COPY are dropped, as PostgreSQL does.
                b'd' | b'c' | b'f' => continue,
                t if !valid_client_tag(t) => return Err(self.protocol_violation(t).await),
                _ => {}
            }
            if skip_to_sync {
                if tag == b'S' {
                    skip_to_sync = false;
                    messages::ready_for_query(&mut self.out, b'I');
                    self.flush_out().await?;
                }
                continue;
            }
            request.unsplit(frame.data);
            // A client streaming Parse/Bind without Sync is bounded like one message.
            if !completes_request(tag)
                && request.len() < self.shared.config.limits.max_message_bytes
            {
                continue;
            }
            self.client.shrink_if_idle();
            match self.checkout().await {
                Ok(server) => {
                    metrics::counter!("pgwarden_queries_total").increment(1);
                    let req = std::mem::take(&mut request);
                    if self.mode == PoolMode::Session {
                        return self.attached(server, req).await;
                    }
                    match self.attached_until_idle(server, req).await? {
                        Flow::Idle => {}
                        Flow::ClientGone => return Ok(()),
                    }
                }
                Err(e) => {
                    request.clear();
                    skip_to_sync = self.checkout_failed(e, tag).await?;
                }
            }
        }
    }

    async fn protocol_violation(&mut self, tag: u8) -> anyhow::Error {
        let msg = format!("invalid frontend message type {tag}");
        let _ = self
            .send_error("FATAL", sqlstate::PROTOCOL_VIOLATION, &msg, false)
            .await;
        anyhow::anyhow!(msg)
    }

    /// Reports a failed checkout; returns whether to skip client messages to the next Sync.
    async fn checkout_failed(&mut self, e: CheckoutError, tag: u8) -> anyhow::Result<bool> {
        tracing::warn!(error = %e, "server checkout failed");
        let (code, message, raw) = e.client_message();
        let ready = matches!(tag, b'Q' | b'S' | b'F');
        match raw {
            Some(raw) => {
                self.out.unsplit(raw);
                if ready {
                    messages::ready_for_query(&mut self.out, b'I');
                }
                self.flush_out().await?;
            }
            None => self.send_error("ERROR", &code, &message, ready).await?,
        }
        Ok(!ready)
    }

    /// Session mode: relay until the client leaves.
    async fn attached(&mut self, mut server: Server, request: BytesMut) -> anyhow::Result<()> {
        let mut progress = Progress::new();
        let flow = self.relay(&mut server, &mut progress, request, true).await;
        self.finish(server, &progress).await;
        flow.map(|_| ())
    }

    /// Transaction mode: relay until the server is idle, then give it back.
    async fn attached_until_idle(
        &mut self,
        mut server: Server,
        request: BytesMut,
    ) -> anyhow::Result<Flow> {
        let mut progress = Progress::new();
        let flow = self.relay(&mut server, &mut progress, request, false).await;
        match flow {
            Ok(Flow::Idle) => self.release(server, false).await,
            _ => self.finish(server, &progress).await,
        }
        flow
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
        let reset = self.mode == PoolMode::Session;
        self.release(server, reset).await;
    }

    async fn relay(
        &mut self,
        server: &mut Server,
        p: &mut Progress,
        first: BytesMut,
        hold: bool,
    ) -> anyhow::Result<Flow> {
        let mut pipeline = Pipeline::default();
        let mut to_server = BytesMut::new();
        for frame in split_frames(first) {
            self.forward(frame, server, p, &mut pipeline, &mut to_server);
        }
        loop {
            if !to_server.is_empty() {
                let sent = async {
                    server.io.write_all(&to_server).await?;
                    server.io.flush().await
                }
                .await;
                if let Err(e) = sent {
                    return Err(self.server_lost(server, e.to_string()).await);
                }
                to_server.clear();
            }
            // Replies the proxy owes before the server's next one (e.g. a dropped
            // Parse followed by Flush) go out now.
            pipeline.drain_leading_injects(&mut self.out);
            if !hold && p.idle() && pipeline.is_empty() {
                self.flush_out().await?;
                return Ok(Flow::Idle);
            }
            if !self.out.is_empty() && !server.io.has_buffered_frame() {
                self.flush_out().await?;
            }
            tokio::select! {
                r = server.io.read_frame() => {
                    let frame = match r {
                        Ok(Some(f)) => f,
                        Ok(None) => return Err(self.server_lost(server, "server closed the connection".into()).await),
                        Err(e) => return Err(self.server_lost(server, e.to_string()).await),
                    };
                    p.received(frame.tag, frame.body());
                    if frame.tag == b'S' {
                        server.note_parameter(frame.body());
                    }
                    if pipeline.on_server(frame.tag, frame.body(), &mut server.prepared, &mut self.out) {
                        self.out.unsplit(frame.data);
                    }
                    pipeline.after_server(&mut self.out);
                    if self.out.len() >= HIGH_WATER || !server.io.has_buffered_frame() {
                        self.flush_out().await?;
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
                        if frame.tag == b'X' {
                            return Ok(Flow::ClientGone);
                        }
                        if !valid_client_tag(frame.tag) {
                            return Err(self.protocol_violation(frame.tag).await);
                        }
                        if completes_request(frame.tag) {
                            metrics::counter!("pgwarden_queries_total").increment(1);
                        }
                        self.forward(frame, server, p, &mut pipeline, &mut to_server);
                        if to_server.len() >= HIGH_WATER || !self.client.has_buffered_frame() {
                            break;
                        }
                        next = self.client.read_frame().await;
                    }
                }
            }
        }
    }

    fn forward(
        &mut self,
        frame: Frame,
        server: &mut Server,
        p: &mut Progress,
        pipeline: &mut Pipeline,
        to_server: &mut BytesMut,
    ) {
        p.sent(frame.tag);
        self.statements
            .rewrite(frame, &mut server.prepared, pipeline, to_server);
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

/// Splits a buffer of whole client messages back into frames.
fn split_frames(mut buf: BytesMut) -> impl Iterator<Item = Frame> {
    std::iter::from_fn(move || {
        if buf.len() < 5 {
            return None;
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        let data = buf.split_to((len + 1).min(buf.len()));
        Some(Frame { tag: data[0], data })
    })
}
