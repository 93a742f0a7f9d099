//! The request loop. Idle: buffer client messages until a request is complete (Query,
//! Sync, FunctionCall or Flush), then check out a server. Attached: relay both ways,
//! batching writes, until the server is idle again and the pool mode lets it go.

use super::checkout::{Server, Session};
use super::commit::PendingCommit;
use super::exchange::pipeline::Pipeline;
use super::lanes::Shape;
use crate::protocol::tags::frontend::PARSE_TAG;
use crate::protocol::{sqlstate, views, walk, Frame};
use crate::router::analysis::{Analysis, PinReason, SetStmt, StatementKind};
use crate::router::parameterize::{parameterize, Parameterized};
use crate::router::text::contains_ci;
use bytes::BytesMut;
use std::collections::VecDeque;

/// Flush what is queued for one side once it grows past this.
const HIGH_WATER: usize = 64 * 1024;

/// What the attached server still owes, and whether it may go back to the pool.
#[derive(Default)]
pub(crate) struct Progress {
    /// Replies still to come, message by message.
    pub(crate) pipeline: Pipeline,
    /// The transaction (or autocommit statement) so far: requests already answered.
    pub(crate) txn: TxnOutcome,
    /// What requests sent but not yet answered did, by ordinal (see Pipeline): a
    /// client may pipeline a request behind another, and each counts only once its
    /// own ReadyForQuery arrives.
    ahead: VecDeque<(u64, TxnOutcome)>,
    /// A commit whose position is still to be read.
    pub(crate) commit: Option<PendingCommit>,
    /// Writes that ran as sent inside a transaction block because this server lacked
    /// their statements: prepared once it is out of the block (auto_prepare).
    prepare: Vec<(u64, Parameterized)>,
    /// What routing found the routed Query's parameterised form to be (Needed::lifted).
    pub(crate) lifted: Option<Option<Parameterized>>,
    savepoints: SavepointWatch,
    /// An extended-protocol batch was sent without its Sync yet.
    open_batch: bool,
    /// COPY in or out in progress.
    copying: bool,
    status: u8,
}

impl Progress {
    pub(crate) fn new() -> Self {
        Progress {
            status: b'I',
            ..Default::default()
        }
    }

    fn sent(&mut self, tag: u8) {
        match tag {
            b'S' => self.open_batch = false,
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => self.open_batch = true,
            b'c' | b'f' => self.copying = false,
            _ => {}
        }
    }

    fn received(&mut self, tag: u8, body: &[u8]) {
        match tag {
            b'Z' => {
                self.status = body.first().copied().unwrap_or(b'I');
                self.copying = false;
            }
            b'G' | b'H' | b'W' => self.copying = true,
            b'c' => self.copying = false,
            _ => {}
        }
    }

    /// Nothing in flight and no transaction open: the connection may be reused.
    pub(crate) fn idle(&self) -> bool {
        self.quiet() && self.status == b'I'
    }

    /// Nothing in flight, though a transaction may be open.
    pub(crate) fn quiet(&self) -> bool {
        self.pipeline.is_empty() && !self.open_batch && !self.copying
    }

    /// Nothing in flight, in a transaction block that has not failed.
    fn in_block(&self) -> bool {
        self.quiet() && self.status == b'T'
    }

    pub(crate) fn status(&self) -> u8 {
        self.status
    }

    /// Where to note what the request with ordinal `ord` does.
    fn staged(&mut self, ord: u64) -> &mut TxnOutcome {
        if self.ahead.back().is_none_or(|(o, _)| *o != ord) {
            self.ahead.push_back((ord, TxnOutcome::default()));
        }
        &mut self.ahead.back_mut().expect("just ensured").1
    }

    /// Moves what the requests answered so far did into the transaction.
    fn answered(&mut self) {
        let done = self.pipeline.completed();
        while self.ahead.front().is_some_and(|(o, _)| *o <= done) {
            let (_, t) = self.ahead.pop_front().expect("checked");
            self.txn.wrote |= t.wrote;
            self.txn.tables.extend(t.tables);
            self.txn.may_be_unflushed |= t.may_be_unflushed;
            self.txn.sets.extend(t.sets);
        }
    }
}

pub(crate) fn completes_request(tag: u8) -> bool {
    matches!(tag, b'Q' | b'S' | b'F' | b'H')
}

pub(crate) fn valid_client_tag(tag: u8) -> bool {
    matches!(
        tag,
        b'Q' | b'P' | b'B' | b'D' | b'E' | b'C' | b'S' | b'H' | b'F' | b'd' | b'c' | b'f' | b'X'
    )
}

/// When a request may run again elsewhere after its server failed.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Retry {
    /// The server answered "shutting down" (57P01-57P03) first: the request never ran.
    pub going_away: bool,
    /// The connection broke before any answer: only safe for reads.
    pub lost: bool,
}

pub(crate) enum Flow {
    /// The server owes nothing and may be released (transaction mode).
    Idle,
    ClientGone,
    /// The server failed before the client saw any answer; run the request elsewhere.
    /// `lost`: its connection broke (rather than the node saying it is going away).
    Retry {
        lost: bool,
    },
}

/// What the current transaction (or autocommit statement) did and how it ended.
#[derive(Default)]
pub(crate) struct TxnOutcome {
    /// An error ended the implicit transaction, or aborted the block so far.
    failed: bool,
    /// How the last COMMIT or ROLLBACK reported: a block's outcome is its final one
    /// (PostgreSQL answers COMMIT of an aborted block with ROLLBACK, and ROLLBACK TO
    /// SAVEPOINT, which does not end the block, with ROLLBACK too).
    ended: Option<bool>,
    /// A statement that writes ran.
    wrote: bool,
    /// The tables it wrote, where known.
    tables: Vec<String>,
    /// Its SQL mentions synchronous_commit (e.g. SET LOCAL synchronous_commit = off):
    /// the commit record may not be flushed when the client has its reply.
    may_be_unflushed: bool,
    /// Session-level SETs it ran, kept for the client only if it commits.
    sets: Vec<SetStmt>,
}

impl TxnOutcome {
    fn on_command(&mut self, tag: &[u8]) {
        let ended = if tag.starts_with(b"COMMIT\0") {
            true
        } else if tag.starts_with(b"ROLLBACK\0") {
            false
        } else {
            return;
        };
        self.ended = Some(ended);
        self.failed = false;
    }
}

/// Whether a ROLLBACK TO SAVEPOINT may undo a session-level SET, which the proxy keeps
/// for the client from its own reply. Statements are seen in the order they are sent;
/// RELEASE and failed statements are not followed, so it may say yes needlessly, never no
/// wrongly.
#[derive(Default)]
struct SavepointWatch {
    /// A SAVEPOINT was sent on this connection.
    open: bool,
    /// A session-level SET or RESET was sent after it.
    set_under: bool,
}

impl SavepointWatch {
    fn undoes_a_set(&mut self, a: &Analysis) -> bool {
        let mut undoes = false;
        for s in &a.statements {
            match s.kind {
                StatementKind::Savepoint => self.open = true,
                StatementKind::RollbackToSavepoint => undoes |= self.set_under,
                _ if self.open
                    && matches!(
                        s.set,
                        Some(SetStmt::Set { local: false, .. } | SetStmt::Reset { .. })
                    ) =>
                {
                    self.set_under = true
                }
                _ => {}
            }
        }
        undoes
    }
}

/// Errors that mean the node is shutting down or restarting, not that the query failed.
fn node_going_away(body: &[u8]) -> bool {
    let (code, _) = views::error_fields(body);
    matches!(code.as_str(), "57P01" | "57P02" | "57P03")
}

impl Session {
    /// Relays between client and `server` until the server owes nothing and may go
    /// (`hold` false), the client leaves, or (`retryable`) the server fails before the
    /// client saw any answer, in which case the request can run elsewhere.
    pub(crate) async fn relay(
        &mut self,
        server: &mut Server,
        p: &mut Progress,
        first: BytesMut,
        hold: bool,
        retry: Retry,
    ) -> anyhow::Result<Flow> {
        let mut to_server = BytesMut::new();
        let flushed_at_start = self.flushed;
        self.statements.attached();
        if let Some(first) = self.send_renamed(first, server, p, &mut to_server) {
            for frame in walk::split_frames(first) {
                self.forward(frame, server, p, &mut to_server);
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
            p.pipeline.drain_leading_injects(&mut self.out);
            // Holding the server (session mode, a pinned client) the position is read
            // here; otherwise the caller reads it detached once the server is idle.
            if hold && p.commit.is_some() && p.pipeline.is_empty() {
                self.flush_out().await?;
                let pending = p.commit.take().unwrap_or_default();
                self.capture_commit(server, pending, false).await;
            }
            if !hold && p.idle() {
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
                    if (retry.going_away || retry.lost) && untouched(self) && frame.tag == b'E' && node_going_away(frame.body()) {
                        return Ok(self.retry(server, false));
                    }
                    // First the pipeline: a reply it hides (the proxy's own Parse or
                    // Bind, a failed auto-prepared statement that will run again as
                    // sent) says nothing about the client's transaction.
                    let forward = p.pipeline.on_server(frame.tag, frame.body(), &mut server.prepared, &mut self.out);
                    p.received(frame.tag, frame.body());
                    if forward {
                        match frame.tag {
                            b'S' => server.note_parameter(frame.body()),
                            b'E' => p.txn.failed = true,
                            b'C' => p.txn.on_command(frame.body()),
                            b'Z' => p.answered(),
                            _ => {}
                        }
                        match frame.tag {
                            b'Z' if p.status() == b'I' => {
                                let txn = std::mem::take(&mut p.txn);
                                let committed = txn.ended.unwrap_or(!txn.failed);
                                self.settle_sets(server, txn.sets, committed);
                                if committed && txn.wrote && self.shared.captures_commits {
                                    self.commit_acknowledged(
                                        txn.tables,
                                        txn.may_be_unflushed,
                                        &mut p.commit,
                                    );
                                }
                                // Out of the block with nothing else in flight: a Parse
                                // now cannot touch a transaction of the client's.
                                let prepare = std::mem::take(&mut p.prepare);
                                if !prepare.is_empty() && p.quiet() {
                                    super::exchange::auto_prepare::send_prepares(
                                        &prepare,
                                        &mut server.prepared,
                                        &mut p.pipeline,
                                        &mut to_server,
                                    );
                                }
                            }
                            _ => {}
                        }
                        self.out.unsplit(frame.data);
                    }
                    if let Some(resend) = p.pipeline.take_resend() {
                        to_server.unsplit(resend);
                    }
                    p.pipeline.after_server(&mut self.out);
                    // In a fleet the reply to a commit waits for its position to reach
                    // Redis (bounded by consistency.fleet_publish_wait_ms); only when
                    // nothing else is in flight, or the client would wait on itself.
                    if p.commit.is_some() && p.pipeline.is_empty() && self.shared.bus.is_some() {
                        let pending = p.commit.take().unwrap_or_default();
                        self.capture_commit(server, pending, true).await;
                    }
                    if self.out.len() >= HIGH_WATER || !server.io.has_buffered_frame() {
                        self.flush_out().await?;
                    }
                    // The commit's position is read once nothing else is in flight on
                    // this connection (the client's reply has already gone out).
                    if hold && p.commit.is_some() && p.pipeline.is_empty() && self.out.is_empty() {
                        let pending = p.commit.take().unwrap_or_default();
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
                        if frame.tag == b'X' {
                            return Ok(Flow::ClientGone);
                        }
                        if !valid_client_tag(frame.tag) {
                            return Err(self.protocol_violation(frame.tag).await);
                        }
                        if completes_request(frame.tag) {
                            self.shared.counters.attached_query(self.attached_route);
                        }
                        self.forward(frame, server, p, &mut to_server);
                        if to_server.len() >= HIGH_WATER || !self.client.has_buffered_frame() {
                            break;
                        }
                        next = self.client.read_frame().await;
                    }
                }
            }
        }
    }

    /// Sends a request on the client's unnamed statement, exactly `Parse Bind [Describe
    /// portal] Execute Sync` of one statement auto_prepare may run, as a statement this
    /// server keeps (pool.auto_prepare; only with the server idle, so that it can run
    /// again as sent). Returns the request when it is not one.
    fn send_renamed(
        &mut self,
        first: BytesMut,
        server: &mut Server,
        p: &mut Progress,
        to_server: &mut BytesMut,
    ) -> Option<BytesMut> {
        if !self.config.pool.auto_prepare || !p.idle() || first.first() != Some(&b'P') {
            return Some(first);
        }
        let read = match self.statements.lane_read(&first, &self.shared.parse_cache) {
            Some(r)
                if r.shape == Shape::Renamed
                    && super::exchange::auto_prepare::eligible(&r.analysis) =>
            {
                r
            }
            _ => return Some(first),
        };
        let ord = p.pipeline.next_ord();
        let staged = p.staged(ord);
        let a = read.analysis.clone();
        if a.is_write() {
            staged.wrote = true;
            staged.tables.extend(a.writes().map(|t| t.name.clone()));
        }
        if views::sql_of(PARSE_TAG, &read.ensure.1[5..])
            .is_some_and(|q| contains_ci(q.as_bytes(), b"synchronous_commit"))
        {
            staged.may_be_unflushed = true;
        }
        super::exchange::auto_prepare::send_renamed(
            read,
            first.freeze(),
            &mut server.prepared,
            &mut p.pipeline,
            to_server,
        );
        None
    }

    /// Gives up on a server that failed before answering; nothing reached the client.
    fn retry(&mut self, server: &mut Server, lost: bool) -> Flow {
        server.broken = true;
        self.out.clear();
        tracing::info!(node = %server.node, lost, "server failed before answering; retrying the request");
        Flow::Retry { lost }
    }

    fn forward(
        &mut self,
        frame: Frame,
        server: &mut Server,
        p: &mut Progress,
        to_server: &mut BytesMut,
    ) {
        p.sent(frame.tag);
        // Taken before the frame is queued: the request it is part of.
        let ord = p.pipeline.next_ord();
        let sql = matches!(frame.tag, b'Q' | b'P')
            .then(|| views::sql_of(frame.tag, frame.body()))
            .flatten();
        if sql.is_some_and(|q| contains_ci(q.as_bytes(), b"synchronous_commit")) {
            p.staged(ord).may_be_unflushed = true;
        }
        let mut known_lift = None;
        let query = sql
            .filter(|_| frame.tag == b'Q')
            .map(|sql| match self.routed.take() {
                Some(a) => {
                    known_lift = p.lifted.take();
                    a
                }
                None => self.shared.parse_cache.analyze(sql),
            });
        let lift = |sql| known_lift.unwrap_or_else(|| parameterize(sql));
        // With the server idle, a fallback to the client's Query (see Pipeline) is free
        // to run it again. In a transaction block it is not: only writes without a
        // result run there prepared, and only once this server has their statement.
        let lifted = match (&query, sql) {
            (Some(a), Some(sql))
                if self.config.pool.auto_prepare && super::exchange::auto_prepare::eligible(a) =>
            {
                if p.idle() {
                    lift(sql).map(|l| (l, true))
                } else if p.in_block() && super::exchange::auto_prepare::eligible_in_block(a, sql) {
                    lift(sql).and_then(|l| {
                        let id = super::exchange::auto_prepare::id_of(&l);
                        if server
                            .prepared
                            .touch(&super::exchange::auto_prepare::name(id))
                        {
                            return Some((l, false));
                        }
                        let known = p.prepare.iter().any(|(k, _)| *k == id);
                        if !known
                            && p.prepare.len() < super::exchange::auto_prepare::PREPARES_PER_IDLE
                        {
                            p.prepare.push((id, l));
                        }
                        None
                    })
                } else {
                    None
                }
            }
            _ => None,
        };
        let bound = (frame.tag == b'B')
            .then(|| views::BindView::new(frame.body()))
            .flatten()
            .and_then(|b| self.statements.analysis_of(b.statement));
        let parsed = match lifted {
            Some((lifted, rerunnable)) => {
                super::exchange::auto_prepare::send(
                    frame,
                    &lifted,
                    &mut server.prepared,
                    &mut p.pipeline,
                    to_server,
                    rerunnable,
                );
                None
            }
            None => self.statements.rewrite(
                frame,
                &self.shared.parse_cache,
                &mut server.prepared,
                &mut p.pipeline,
                to_server,
            ),
        };
        let staged = p.staged(ord);
        // What runs (a Query, or an Execute of a bound statement) may write.
        if let Some(a) = query.as_ref().or(bound.as_ref()) {
            if a.is_write() {
                staged.wrote = true;
                staged.tables.extend(a.writes().map(|t| t.name.clone()));
            }
        }
        if let Some(a) = query.or(parsed) {
            self.note_session_effects(&a, &mut staged.sets);
            // Once pinned, the server keeps the client's settings: nothing to watch.
            if self.pinned.is_none() && p.savepoints.undoes_a_set(&a) {
                // Which SETs it undid only the server knows: keep the client on it.
                tracing::debug!("client pinned: ROLLBACK TO SAVEPOINT after a SET under it");
                self.pinned = Some(PinReason::SavepointUndoesSet);
            }
        }
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

#[cfg(test)]
mod tests {
    use super::SavepointWatch;
    use crate::router::analysis::analyze;

    /// Feeds each request to one watch; returns which ones it said may undo a SET.
    fn undoing(requests: &[&str]) -> Vec<bool> {
        let mut w = SavepointWatch::default();
        requests
            .iter()
            .map(|sql| w.undoes_a_set(&analyze(sql, &[])))
            .collect()
    }

    #[test]
    fn only_a_set_under_a_savepoint_can_be_undone() {
        assert_eq!(
            undoing(&["begin; set a.b = 1; savepoint s", "rollback to s; commit"]),
            [false, false]
        );
        assert_eq!(
            undoing(&["begin; savepoint s; set local a.b = 1", "rollback to s"]),
            [false, false]
        );
        assert_eq!(
            undoing(&["begin", "savepoint s", "reset a.b", "rollback to s"]),
            [false, false, false, true]
        );
        assert_eq!(
            undoing(&["savepoint s; set a.b = 1; rollback to savepoint s"]),
            [true]
        );
    }
}
