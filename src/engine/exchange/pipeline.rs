//! What the attached server still owes the client, message by message, so the proxy can
//! drop a Parse the server already has (answering ParseComplete itself) or slip in a
//! re-prepare (hiding its answer) without the client seeing any difference.

use super::kept;
use crate::backend::prepared::PreparedSet;
use crate::protocol::tags::backend::{
    BIND_COMPLETE_TAG, CLOSE_COMPLETE_TAG, COMMAND_COMPLETE_TAG, COPY_IN_RESPONSE_TAG,
    EMPTY_QUERY_RESPONSE_TAG, ERROR_RESPONSE_TAG, NOTICE_RESPONSE_TAG, NOTIFICATION_RESPONSE_TAG,
    NO_DATA_TAG, PARAMETER_STATUS_TAG, PARSE_COMPLETE_TAG, PORTAL_SUSPENDED_TAG,
    READY_FOR_QUERY_TAG, ROW_DESCRIPTION_TAG,
};
use crate::protocol::tags::frontend::{BIND_TAG, DESCRIBE_TAG, EXECUTE_TAG, PARSE_TAG};
use crate::protocol::{to_client, to_server, walk};
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::Arc;

#[derive(Debug)]
pub enum Expect {
    /// ParseComplete; `name` is the server-side statement being created.
    Parse {
        name: Option<Arc<str>>,
        hide: bool,
    },
    Bind,
    /// ParameterDescription then RowDescription/NoData.
    DescribeStatement,
    DescribePortal,
    Execute,
    Close {
        hide: bool,
    },
    // The entries that owe a ReadyForQuery carry the ordinal of the request they end
    // (see Pipeline::next_ord), so what a request did is settled at its own reply.
    Sync {
        ord: u64,
    },
    Query {
        ord: u64,
    },
    FunctionCall {
        ord: u64,
    },
    /// A reply the proxy produces itself, in order (ParseComplete or CloseComplete).
    Inject(u8),
    /// The client ended a COPY (CopyDone/CopyFail) before the server said COPY began;
    /// no reply of its own.
    CopyEnd,
    /// A simple Query sent as [Parse] Bind Describe Execute Sync of the server statement
    /// `id` (see auto_prepare); `query` is the client's Query, run as sent if the
    /// statement fails before it executes.
    AutoQuery {
        ord: u64,
        id: u64,
        query: Bytes,
        parse_pending: bool,
        bound: bool,
        /// Outside a transaction block it can run again as sent; inside one an error
        /// has aborted the block, so the client gets the error as it comes.
        rerunnable: bool,
        /// The error that stopped it before it executed, held back from the client.
        failed: Option<Bytes>,
    },
    /// A Parse the proxy sends on its own between transactions (see
    /// auto_prepare::send_prepares), and the Sync that ends them: their replies, errors
    /// included, are the proxy's.
    Prepare {
        name: Arc<str>,
    },
    PrepareSync,
    /// A request on the unnamed statement, `[Parse] Bind [Describe portal] Execute Sync`,
    /// run on the server statement `name` (see statements::send_renamed); `request` is
    /// the client's, run as sent if the statement fails before it binds.
    Renamed {
        ord: u64,
        name: Arc<str>,
        request: Bytes,
        /// The Parse creating `name` was sent and has not answered yet.
        parse_pending: bool,
        /// The server has the statement: the client is owed its ParseComplete.
        parsed: bool,
        bound: bool,
        /// The error that stopped it before it bound, held back from the client.
        failed: Option<Bytes>,
    },
}

/// The replies owed to `request` (a Renamed request's messages) sent as they are.
fn expect_as_sent(q: &mut VecDeque<Expect>, request: &[u8], ord: u64) {
    for m in walk::messages(request) {
        q.push_back(match m.tag {
            PARSE_TAG => Expect::Parse {
                name: None,
                hide: false,
            },
            BIND_TAG => Expect::Bind,
            DESCRIBE_TAG => Expect::DescribePortal,
            EXECUTE_TAG => Expect::Execute,
            _ => Expect::Sync { ord },
        });
    }
}

#[derive(Default)]
pub struct Pipeline {
    q: VecDeque<Expect>,
    /// The server is in COPY FROM STDIN and the client has not ended it: PostgreSQL
    /// ignores Sync and Flush then, so they owe no reply.
    copy_in: bool,
    /// Messages the server must be sent next (an AutoQuery falling back to its Query).
    resend: Option<BytesMut>,
    /// Entries owing a ReadyForQuery pushed so far: the last one's ordinal.
    pushed: u64,
    /// The ordinal of the last request whose ReadyForQuery reached the client.
    completed: u64,
}

impl Expect {
    fn ord_mut(&mut self) -> Option<&mut u64> {
        match self {
            Expect::Sync { ord }
            | Expect::Query { ord }
            | Expect::FunctionCall { ord }
            | Expect::AutoQuery { ord, .. }
            | Expect::Renamed { ord, .. } => Some(ord),
            _ => None,
        }
    }

    fn owes_ready(&self) -> bool {
        matches!(
            self,
            Expect::Sync { .. } | Expect::Query { .. } | Expect::FunctionCall { .. }
        )
    }
}

impl Pipeline {
    /// Queues an expectation; one that owes a ReadyForQuery gets the next ordinal.
    pub fn push(&mut self, mut e: Expect) {
        if let Some(ord) = e.ord_mut() {
            self.pushed += 1;
            *ord = self.pushed;
        }
        self.q.push_back(e);
    }

    /// The ordinal the request now being forwarded will have: its Query, or the Sync
    /// that will end its extended-protocol batch.
    pub fn next_ord(&self) -> u64 {
        self.pushed + 1
    }

    /// The ordinal of the last request answered with ReadyForQuery; every request up to
    /// it is done (those whose Sync PostgreSQL ignored in COPY included).
    pub fn completed(&self) -> u64 {
        self.completed
    }

    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    fn flush_injects(&mut self, out: &mut BytesMut) {
        loop {
            match self.q.front() {
                Some(Expect::Inject(tag)) => to_client::empty(out, *tag),
                Some(Expect::CopyEnd) => {}
                _ => return,
            }
            self.q.pop_front();
        }
    }

    /// A client Sync: owed a ReadyForQuery unless the server is taking COPY data.
    pub fn client_sync(&mut self) {
        if !self.copy_in {
            self.push(Expect::Sync { ord: 0 });
        }
    }

    /// A client CopyDone/CopyFail.
    pub fn client_copy_end(&mut self) {
        if self.copy_in {
            self.copy_in = false;
        } else {
            self.q.push_back(Expect::CopyEnd);
        }
    }

    /// The server entered COPY FROM STDIN for the statement at the front. Syncs the
    /// client pipelined behind it, before its CopyDone/CopyFail, are ignored by the
    /// server and so owe nothing.
    fn copy_in_started(&mut self) {
        let mut i = 1;
        while i < self.q.len() {
            match self.q[i] {
                Expect::Sync { .. } => {
                    self.q.remove(i);
                }
                Expect::CopyEnd => {
                    self.q.remove(i);
                    return;
                }
                _ => i += 1,
            }
        }
        self.copy_in = true;
    }

    /// What must be sent to the server before anything else, if anything.
    pub fn take_resend(&mut self) -> Option<BytesMut> {
        self.resend.take()
    }

    /// An AutoQuery at the front accounts for the message. The server's replies to the
    /// Parse and Bind are the proxy's own; an error before the statement executes (say,
    /// "cached plan must not change result type" after DDL) is hidden with its
    /// ReadyForQuery and the client's Query runs as sent, so the client sees exactly
    /// what the simple protocol gives.
    fn on_auto(
        &mut self,
        tag: u8,
        body: &[u8],
        prepared: &mut PreparedSet,
        out: &mut BytesMut,
    ) -> bool {
        let Some(Expect::AutoQuery {
            id,
            parse_pending,
            bound,
            rerunnable,
            failed,
            ..
        }) = self.q.front_mut()
        else {
            return true;
        };
        match tag {
            PARSE_COMPLETE_TAG if *parse_pending => {
                *parse_pending = false;
                false
            }
            BIND_COMPLETE_TAG if !*bound => {
                *bound = true;
                false
            }
            // Describe of a statement without rows (UPDATE without RETURNING): the
            // simple protocol sends nothing in its place.
            NO_DATA_TAG => false,
            ERROR_RESPONSE_TAG => {
                if *parse_pending {
                    // The statement was never created.
                    prepared.remove(&kept::name(*id));
                    *parse_pending = false;
                }
                if !*rerunnable || !kept::early_error_falls_back(*bound, body) {
                    return true;
                }
                *failed = Some(Bytes::copy_from_slice(body));
                false
            }
            READY_FOR_QUERY_TAG => {
                let Some(Expect::AutoQuery {
                    ord,
                    id,
                    query,
                    parse_pending,
                    failed,
                    ..
                }) = self.q.pop_front()
                else {
                    return true;
                };
                let Some(error) = failed else {
                    self.completed = ord;
                    return true;
                };
                let stmt = (!parse_pending).then(|| kept::name(id));
                let expect = |q: &mut VecDeque<Expect>| q.push_back(Expect::Query { ord });
                if self.run_again_as_sent(stmt.as_deref(), prepared, &query, expect) {
                    return false;
                }
                // The client pipelined more behind it, already sent: running the Query
                // now would answer out of order, so the client gets the error after all.
                self.completed = ord;
                to_client::error_with_body(out, &error);
                true
            }
            _ => failed.is_none(),
        }
    }

    /// A Renamed request at the front accounts for the message. The client's
    /// ParseComplete goes out just before the BindComplete; until then nothing has
    /// reached the client, so an error before the statement binds (it went stale after
    /// DDL, or the client's own error) is hidden with its ReadyForQuery and the request
    /// runs again as sent: the client gets exactly what its unnamed statement gives.
    fn on_renamed(
        &mut self,
        tag: u8,
        body: &[u8],
        prepared: &mut PreparedSet,
        out: &mut BytesMut,
    ) -> bool {
        let Some(Expect::Renamed {
            name,
            parse_pending,
            parsed,
            bound,
            failed,
            ..
        }) = self.q.front_mut()
        else {
            return true;
        };
        match tag {
            PARSE_COMPLETE_TAG if *parse_pending => {
                *parse_pending = false;
                *parsed = true;
                false
            }
            BIND_COMPLETE_TAG if !*bound && failed.is_none() => {
                *bound = true;
                to_client::empty(out, PARSE_COMPLETE_TAG);
                true
            }
            ERROR_RESPONSE_TAG if failed.is_none() => {
                if std::mem::take(parse_pending) {
                    // The statement was never created.
                    prepared.remove(name);
                }
                if !kept::early_error_falls_back(*bound, body) {
                    if !*bound && *parsed {
                        to_client::empty(out, PARSE_COMPLETE_TAG);
                    }
                    return true;
                }
                *failed = Some(Bytes::copy_from_slice(body));
                false
            }
            READY_FOR_QUERY_TAG => {
                let Some(Expect::Renamed {
                    ord,
                    name,
                    request,
                    parsed,
                    failed,
                    ..
                }) = self.q.pop_front()
                else {
                    return true;
                };
                let Some(error) = failed else {
                    self.completed = ord;
                    return true;
                };
                let stmt = parsed.then_some(&*name);
                let expect = |q: &mut VecDeque<Expect>| expect_as_sent(q, &request, ord);
                if self.run_again_as_sent(stmt, prepared, &request, expect) {
                    return false;
                }
                // The client pipelined more behind it, already sent: it gets the error.
                self.completed = ord;
                if parsed {
                    to_client::empty(out, PARSE_COMPLETE_TAG);
                }
                to_client::error_with_body(out, &error);
                true
            }
            _ => failed.is_none(),
        }
    }

    /// After a request the proxy ran in another form failed before it executed (its
    /// error held back): closes the server statement `stmt` (unusable, maybe stale; the
    /// next use prepares it anew) and, alone, runs the client's
    /// `request` again right here, its replies owed as `expect` adds them (it keeps its
    /// ordinal: still the same request). Returns whether it runs again; if not, others
    /// are in flight behind it.
    fn run_again_as_sent(
        &mut self,
        stmt: Option<&str>,
        prepared: &mut PreparedSet,
        request: &[u8],
        expect: impl FnOnce(&mut VecDeque<Expect>),
    ) -> bool {
        let rerun = self.q.is_empty();
        let mut resend = BytesMut::new();
        if let Some(name) = stmt.filter(|n| prepared.touch(n)) {
            prepared.remove(name);
            to_server::close_statement(&mut resend, name);
            if !rerun {
                // Nothing follows it: Flush, or the server keeps its CloseComplete
                // until the next Sync.
                to_server::flush(&mut resend);
            }
            self.q.push_back(Expect::Close { hide: true });
        }
        if rerun {
            expect(&mut self.q);
            resend.extend_from_slice(request);
        }
        if !resend.is_empty() {
            self.resend = Some(resend);
        }
        rerun
    }

    /// Emits replies the proxy owes before anything else arrives (e.g. a dropped
    /// Parse followed by a Flush).
    pub fn drain_leading_injects(&mut self, out: &mut BytesMut) {
        self.flush_injects(out);
    }

    /// Accounts for one server message; returns false when the client must not see it.
    pub fn on_server(
        &mut self,
        tag: u8,
        body: &[u8],
        prepared: &mut PreparedSet,
        out: &mut BytesMut,
    ) -> bool {
        // Asynchronous messages may come at any point.
        if matches!(
            tag,
            NOTICE_RESPONSE_TAG | PARAMETER_STATUS_TAG | NOTIFICATION_RESPONSE_TAG
        ) {
            return true;
        }
        self.flush_injects(out);
        match (self.q.front(), tag) {
            (Some(Expect::AutoQuery { .. }), _) => return self.on_auto(tag, body, prepared, out),
            (Some(Expect::Renamed { .. }), _) => return self.on_renamed(tag, body, prepared, out),
            (Some(Expect::Prepare { .. }), PARSE_COMPLETE_TAG)
            | (Some(Expect::PrepareSync), READY_FOR_QUERY_TAG) => {
                self.q.pop_front();
                return false;
            }
            (Some(Expect::Prepare { .. }), ERROR_RESPONSE_TAG) => {
                // The server skips to the Sync: none of these statements exists.
                while let Some(e) = self.q.pop_front() {
                    match e {
                        Expect::Prepare { name } => prepared.remove(&name),
                        Expect::PrepareSync => {
                            self.q.push_front(Expect::PrepareSync);
                            break;
                        }
                        _ => {}
                    }
                }
                return false;
            }
            _ => {}
        }
        if tag == COPY_IN_RESPONSE_TAG {
            self.copy_in_started();
        }
        if tag == COMMAND_COMPLETE_TAG
            && (body.starts_with(b"DISCARD ALL") || body.starts_with(b"DEALLOCATE ALL"))
        {
            prepared.clear();
        }
        let forward = match (self.q.front(), tag) {
            (Some(Expect::Parse { hide, .. }), PARSE_COMPLETE_TAG) => {
                let hide = *hide;
                self.q.pop_front();
                !hide
            }
            (Some(e), READY_FOR_QUERY_TAG) if e.owes_ready() => {
                if let Some(mut e) = self.q.pop_front() {
                    self.completed = e.ord_mut().map_or(self.completed, |o| *o);
                }
                true
            }
            (Some(Expect::Bind), BIND_COMPLETE_TAG)
            | (
                Some(Expect::DescribeStatement | Expect::DescribePortal),
                ROW_DESCRIPTION_TAG | NO_DATA_TAG,
            )
            | (
                Some(Expect::Execute),
                COMMAND_COMPLETE_TAG | EMPTY_QUERY_RESPONSE_TAG | PORTAL_SUSPENDED_TAG,
            ) => {
                self.q.pop_front();
                true
            }
            (Some(Expect::Close { hide }), CLOSE_COMPLETE_TAG) => {
                let hide = *hide;
                self.q.pop_front();
                !hide
            }
            (Some(Expect::Query { .. } | Expect::FunctionCall { .. }), ERROR_RESPONSE_TAG) => {
                self.copy_in = false;
                true
            }
            (_, ERROR_RESPONSE_TAG) => {
                self.copy_in = false;
                // The server skips everything up to the next Sync after an error in an
                // extended batch, a Query or FunctionCall sent before that Sync included
                // (postgres.c: ignore_till_sync); so do the expectations, including
                // replies we owed.
                while let Some(e) = self.q.front() {
                    match e {
                        Expect::Sync { .. } => break,
                        Expect::Parse { name: Some(n), .. } => {
                            prepared.remove(n);
                            self.q.pop_front();
                        }
                        _ => {
                            self.q.pop_front();
                        }
                    }
                }
                true
            }
            (Some(e), _) if e.owes_ready() => true,
            (_, READY_FOR_QUERY_TAG) => {
                // Out of step (should not happen): resynchronise on this Sync.
                self.completed = self.pushed;
                while let Some(mut e) = self.q.pop_front() {
                    if e.owes_ready() {
                        self.completed = e.ord_mut().map_or(self.completed, |o| *o);
                        break;
                    }
                }
                true
            }
            _ => true,
        };
        forward
    }

    /// Replies owed right after a server message go out right behind it.
    pub fn after_server(&mut self, out: &mut BytesMut) {
        self.flush_injects(out);
    }
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;
