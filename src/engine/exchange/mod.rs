//! The exchange with one server connection, without I/O: the relay hands it each client
//! message to send and each server message received, and it says what goes where.
//! It keeps what the server still owes the client (pipeline), renames client statements
//! for transaction pooling (statements), runs simple Queries as statements the server
//! keeps (auto_prepare), and follows the transaction (txn): SETs to keep, pins, writes
//! whose commit position must be captured.

pub(crate) mod auto_prepare;
pub(crate) mod kept;
pub mod pipeline;
pub mod statements;
pub(crate) mod txn;

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod tests;

use crate::backend::prepared::PreparedSet;
use crate::config::Config;
use crate::engine::commit::PendingCommit;
use crate::protocol::tags::backend::COPY_BOTH_RESPONSE_TAG;
use crate::protocol::tags::backend::{
    COMMAND_COMPLETE_TAG, COPY_DONE_TAG, COPY_IN_RESPONSE_TAG, COPY_OUT_RESPONSE_TAG,
    ERROR_RESPONSE_TAG, PARAMETER_STATUS_TAG, READY_FOR_QUERY_TAG,
};
use crate::protocol::tags::frontend::{
    BIND_TAG, CLOSE_TAG, COPY_FAIL_TAG, DESCRIBE_TAG, EXECUTE_TAG, FLUSH_TAG, PARSE_TAG, QUERY_TAG,
    SYNC_TAG,
};
use crate::protocol::{views, Frame};
use crate::router::analysis::{Analysis, PinReason};
use crate::router::parameterize::{Lift, Parameterized};
use crate::router::parse_cache::ParseCache;
use crate::router::text::contains_ci;
use crate::session::Session;
use bytes::BytesMut;
use kept::Shape;
use pipeline::Pipeline;
use std::collections::VecDeque;
use std::sync::Arc;
use txn::{SavepointWatch, TxnOutcome};

/// What the exchange reads and changes besides its own state.
pub(crate) struct Ctx<'a> {
    pub session: &'a mut Session,
    pub config: &'a Config,
    pub parse_cache: &'a ParseCache,
    /// The analysis routing made of a request that is one Query, taken when that Query
    /// is forwarded so its SQL is not analysed twice.
    pub routed: &'a mut Option<Arc<Analysis>>,
    pub server: ServerBook<'a>,
}

/// The attached server connection's bookkeeping (not its socket).
pub(crate) struct ServerBook<'a> {
    /// Statements prepared on it on clients' behalf.
    pub prepared: &'a mut PreparedSet,
    /// Client settings last applied on it with SET.
    pub applied: &'a mut Vec<(String, String)>,
    /// Its ParameterStatus values.
    pub params: &'a mut Vec<(String, String)>,
}

/// A transaction that wrote was committed: its position is to be captured.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Committed {
    pub tables: Vec<String>,
    /// It wrote what the proxy cannot name (see TxnOutcome::opaque).
    pub opaque: bool,
    /// The functions its writing statements called.
    pub calls: Vec<String>,
    /// Its SQL may have turned synchronous_commit off (see commit.rs).
    pub may_be_unflushed: bool,
}

/// The exchange with one attached server: what it still owes the client, what the
/// transaction so far did, and whether it may go back to the pool.
#[derive(Default)]
pub(crate) struct Exchange {
    /// Replies still to come, message by message.
    pub(crate) pipeline: Pipeline,
    /// The transaction (or autocommit statement) so far: requests already answered.
    pub(crate) txn: TxnOutcome,
    /// What requests sent but not yet answered did, by ordinal (see Pipeline): a
    /// client may pipeline a request behind another, and each counts only once its
    /// own ReadyForQuery arrives.
    pub(crate) ahead: VecDeque<(u64, TxnOutcome)>,
    /// A commit whose position is still to be read.
    pub(crate) commit: Option<PendingCommit>,
    /// Writes that ran as sent inside a transaction block because this server lacked
    /// their statements: prepared once it is out of the block (auto_prepare).
    pub(crate) prepare: Vec<(u64, Parameterized)>,
    /// What routing found the routed Query's parameterised form to be (Needed::lifted).
    pub(crate) lifted: Lift,
    pub(crate) savepoints: SavepointWatch,
    /// An extended-protocol batch was sent without its Sync yet.
    pub(crate) open_batch: bool,
    /// COPY in or out in progress.
    pub(crate) copying: bool,
    pub(crate) status: u8,
}

impl Exchange {
    pub(crate) fn new() -> Self {
        Exchange {
            status: b'I',
            ..Default::default()
        }
    }

    fn sent(&mut self, tag: u8) {
        match tag {
            SYNC_TAG => self.open_batch = false,
            PARSE_TAG | BIND_TAG | DESCRIBE_TAG | EXECUTE_TAG | CLOSE_TAG | FLUSH_TAG => {
                self.open_batch = true
            }
            crate::protocol::tags::frontend::COPY_DONE_TAG | COPY_FAIL_TAG => self.copying = false,
            _ => {}
        }
    }

    fn received(&mut self, tag: u8, body: &[u8]) {
        match tag {
            READY_FOR_QUERY_TAG => {
                self.status = body.first().copied().unwrap_or(b'I');
                self.copying = false;
            }
            COPY_IN_RESPONSE_TAG | COPY_OUT_RESPONSE_TAG | COPY_BOTH_RESPONSE_TAG => {
                self.copying = true
            }
            COPY_DONE_TAG => self.copying = false,
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
            self.txn.absorb(t);
        }
    }

    /// Takes one client message: notes what it does, and queues what the server must
    /// be sent for it (the message itself, renamed, or run as a kept statement).
    pub(crate) fn client_frame(&mut self, frame: Frame, cx: &mut Ctx, to_server: &mut BytesMut) {
        self.sent(frame.tag);
        // Taken before the frame is queued: the request it is part of.
        let ord = self.pipeline.next_ord();
        let sql = matches!(frame.tag, QUERY_TAG | PARSE_TAG)
            .then(|| views::sql_of(frame.tag, frame.body()))
            .flatten();
        if sql.is_some_and(|q| contains_ci(q.as_bytes(), b"synchronous_commit")) {
            self.staged(ord).may_be_unflushed = true;
        }
        let mut known_lift = Lift::Unknown;
        let query = sql
            .filter(|_| frame.tag == QUERY_TAG)
            .map(|sql| match cx.routed.take() {
                Some(a) => {
                    known_lift = std::mem::take(&mut self.lifted);
                    a
                }
                None => cx.parse_cache.analyze(sql),
            });
        // With the server idle, a fallback to the client's Query (see Pipeline) is free
        // to run it again. In a transaction block it is not: only writes without a
        // result run there prepared, and only once this server has their statement.
        let lifted = match (&query, sql) {
            (Some(a), Some(sql)) if cx.config.pool.auto_prepare && auto_prepare::eligible(a) => {
                if self.idle() {
                    known_lift.resolve(sql).map(|l| (l, true))
                } else if self.in_block() && auto_prepare::eligible_in_block(a, sql) {
                    known_lift.resolve(sql).and_then(|l| {
                        let id = kept::id_of(&l);
                        if cx.server.prepared.touch(&kept::name(id)) {
                            return Some((l, false));
                        }
                        let known = self.prepare.iter().any(|(k, _)| *k == id);
                        if !known && self.prepare.len() < auto_prepare::PREPARES_PER_IDLE {
                            self.prepare.push((id, l));
                        }
                        None
                    })
                } else {
                    None
                }
            }
            _ => None,
        };
        let bound = (frame.tag == BIND_TAG)
            .then(|| views::BindView::new(frame.body()))
            .flatten()
            .and_then(|b| cx.session.statements.analysis_of(b.statement));
        let parsed = match lifted {
            Some((lifted, rerunnable)) => {
                auto_prepare::send(
                    frame,
                    &lifted,
                    cx.server.prepared,
                    &mut self.pipeline,
                    to_server,
                    rerunnable,
                );
                None
            }
            None => cx.session.statements.rewrite(
                frame,
                cx.parse_cache,
                cx.server.prepared,
                &mut self.pipeline,
                to_server,
            ),
        };
        let staged = self.staged(ord);
        // What runs (a Query, or an Execute of a bound statement) may write.
        if let Some(a) = query.as_ref().or(bound.as_ref()) {
            staged.note_write(a);
        }
        if let Some(a) = query.or(parsed) {
            cx.session
                .note_effects(&a, &mut staged.sets, cx.config.consistency.mode);
            // Once pinned, the server keeps the client's settings: nothing to watch.
            if cx.session.pinned.is_none() && self.savepoints.undoes_a_set(&a) {
                // Which SETs it undid only the server knows: keep the client on it.
                tracing::debug!("client pinned: ROLLBACK TO SAVEPOINT after a SET under it");
                cx.session.pinned = Some(PinReason::SavepointUndoesSet);
            }
        }
    }

    /// Sends a request on the client's unnamed statement, exactly `Parse Bind [Describe
    /// portal] Execute Sync` of one statement auto_prepare may run, as a statement this
    /// server keeps (pool.auto_prepare; only with the server idle, so that it can run
    /// again as sent). Returns the request when it is not one.
    pub(crate) fn send_renamed(
        &mut self,
        first: BytesMut,
        cx: &mut Ctx,
        to_server: &mut BytesMut,
    ) -> Option<BytesMut> {
        if !cx.config.pool.auto_prepare || !self.idle() || first.first() != Some(&PARSE_TAG) {
            return Some(first);
        }
        let read = match cx.session.statements.lane_read(&first, cx.parse_cache) {
            Some(r) if r.shape == Shape::Renamed && auto_prepare::eligible(&r.analysis) => r,
            _ => return Some(first),
        };
        let ord = self.pipeline.next_ord();
        let staged = self.staged(ord);
        staged.note_write(&read.analysis);
        if views::sql_of(PARSE_TAG, &read.ensure.1[5..])
            .is_some_and(|q| contains_ci(q.as_bytes(), b"synchronous_commit"))
        {
            staged.may_be_unflushed = true;
        }
        statements::send_renamed(
            read,
            first.freeze(),
            cx.server.prepared,
            &mut self.pipeline,
            to_server,
        );
        None
    }

    /// Takes one server message: what the client is to see of it goes to `out`, what the
    /// server must be sent next to `to_server`. Returns the transaction that just
    /// committed a write, when `captures` (commit positions are wanted) and one did.
    pub(crate) fn server_frame(
        &mut self,
        frame: Frame,
        cx: &mut Ctx,
        out: &mut BytesMut,
        to_server: &mut BytesMut,
        captures: bool,
    ) -> Option<Committed> {
        let (tag, body) = (frame.tag, frame.body());
        // First the pipeline: a reply it hides (the proxy's own Parse or Bind, a failed
        // auto-prepared statement that will run again as sent) says nothing about the
        // client's transaction.
        let forward = self.pipeline.on_server(tag, body, cx.server.prepared, out);
        self.received(tag, body);
        let mut committed = None;
        if forward {
            match tag {
                PARAMETER_STATUS_TAG => {
                    crate::backend::conn::note_parameter(cx.server.params, body)
                }
                ERROR_RESPONSE_TAG => self.txn.failed = true,
                COMMAND_COMPLETE_TAG => self.txn.on_command(body),
                READY_FOR_QUERY_TAG => self.answered(),
                _ => {}
            }
            if tag == READY_FOR_QUERY_TAG && self.status == b'I' {
                let txn = std::mem::take(&mut self.txn);
                let ok = txn.ended.unwrap_or(!txn.failed);
                cx.session.settle_sets(txn.sets, ok, cx.server.applied);
                if ok && txn.wrote && captures {
                    committed = Some(Committed {
                        tables: txn.tables,
                        opaque: txn.opaque,
                        calls: txn.calls,
                        may_be_unflushed: txn.may_be_unflushed,
                    });
                }
                // Out of the block with nothing else in flight: a Parse now cannot
                // touch a transaction of the client's.
                let prepare = std::mem::take(&mut self.prepare);
                if !prepare.is_empty() && self.quiet() {
                    auto_prepare::send_prepares(
                        &prepare,
                        cx.server.prepared,
                        &mut self.pipeline,
                        to_server,
                    );
                }
            }
            out.unsplit(frame.data);
        }
        if let Some(resend) = self.pipeline.take_resend() {
            to_server.unsplit(resend);
        }
        self.pipeline.after_server(out);
        committed
    }
}
