//! The task that owns one shared read lane's server connection: it writes the reads
//! queued for the lane as they come (up to MAX_IN_FLIGHT unanswered), each ending with
//! its own Sync, and hands every reply back to its client in order, with what the lane
//! itself added (a Parse the connection lacked, a Close of a statement evicted or gone
//! stale, the Bind of a lifted simple Query) taken out, and what the client's own
//! messages would have had (the ParseComplete of an unnamed Parse run as a named
//! statement) put in.

use super::slow::Why;
use super::{Ensure, LaneReply, LaneRequest, LaneState, Lanes, Shape};
use crate::backend::prepared::PreparedSet;
use crate::engine::exchange::{auto_prepare, kept};
use crate::engine::{give_back, Server};
use crate::protocol::tags::backend::{
    BIND_COMPLETE_TAG, CLOSE_COMPLETE_TAG, ERROR_RESPONSE_TAG, NO_DATA_TAG, PARSE_COMPLETE_TAG,
    READY_FOR_QUERY_TAG,
};
use crate::protocol::{to_client, to_server, Frame};
use crate::topology::Node;
use bytes::BytesMut;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Requests written and not yet answered, at most: PostgreSQL reads them in one go.
const MAX_IN_FLIGHT: usize = 32;
/// Room a reply that needs a ParseComplete put in front starts with (see `write`).
const RENAMED_REPLY: usize = 256;
/// A lane idle this long gives its server connection back to the pool.
const IDLE: Duration = Duration::from_secs(10);
/// A reply larger than this is not held by the lane: the read runs the usual way, which
/// streams it, and its statement stays off lanes as a slow one does.
const MAX_REPLY: usize = 256 * 1024;
/// Reads a new lane answers before it judges any slow against what is usual there...
const WARM_UP: u32 = 32;
/// ...until then, only a read this long is.
const WARM_UP_SLOW: Duration = Duration::from_secs(1);

/// One request written to the server, and what is owed of its reply.
struct Flight {
    req: LaneRequest,
    /// None once its session was told to serve it the usual way (see `release`): its
    /// reply, when it comes, is dropped.
    reply: Option<oneshot::Sender<LaneReply>>,
    out: BytesMut,
    /// CloseCompletes of the lane's own Closes, to hide, before the request's replies.
    closes: usize,
    /// A Parse the lane sent (the connection lacked the statement): its ParseComplete is
    /// hidden, and if it fails the statement does not exist.
    parse: Option<Arc<str>>,
    bound: bool,
    /// The lane's form of the request failed before it ran, or its reply outgrew
    /// MAX_REPLY: its session runs it as sent.
    fall_back: bool,
    too_big: bool,
}

/// The lane's side of its server connection.
struct LaneConn {
    in_flight: VecDeque<Flight>,
    to_server: BytesMut,
    /// Statements gone stale, closed with the next request written.
    stale: Vec<Arc<str>>,
    /// When the request at the head of `in_flight` started running on the server.
    head_since: Instant,
    /// How long a read usually takes here (moving average, µs): a read is slow when it
    /// takes `slow_after` and ten times that. Under overload every read slows down, so
    /// none stands out and none is sent off the lanes for it.
    usual_us: u64,
    /// Reads answered so far, up to WARM_UP.
    answered: u32,
    /// The head is slow: the reads behind it were handed back, and new ones are, until
    /// it ends.
    stalled: bool,
}

pub(crate) async fn run(
    lanes: Arc<Lanes>,
    node: Arc<Node>,
    settings: u64,
    state: Arc<LaneState>,
    mut server: Server,
    mut rx: mpsc::Receiver<LaneRequest>,
) {
    let mut wire = LaneConn {
        in_flight: VecDeque::new(),
        to_server: BytesMut::new(),
        stale: Vec::new(),
        head_since: Instant::now(),
        usual_us: 0,
        answered: 0,
        stalled: false,
    };
    let ok = pump(&lanes, &node, &state, &mut server, &mut rx, &mut wire).await;
    // Requests still queued or in flight get no reply: their sessions serve them the
    // usual way (nothing has reached their clients).
    for _ in &wire.in_flight {
        node.runtime.end_query();
    }
    lanes.close(&node.name, settings);
    drop(rx);
    // A stale statement not yet closed would clash with the next Parse of its name.
    if !ok || !wire.stale.is_empty() {
        server.broken = true;
    }
    give_back(server);
}

/// Returns false when the server failed, true when the lane went idle.
async fn pump(
    lanes: &Lanes,
    node: &Node,
    state: &LaneState,
    server: &mut Server,
    rx: &mut mpsc::Receiver<LaneRequest>,
    wire: &mut LaneConn,
) -> bool {
    // One timer, moved only when its meaning changes: the idle deadline while nothing
    // is in flight, the head's slow deadline while reads wait behind it.
    let mut deadline = Instant::now() + IDLE;
    let timer = tokio::time::sleep_until(deadline.into());
    tokio::pin!(timer);
    loop {
        let wanted = if wire.in_flight.is_empty() {
            Some(wire.head_since + IDLE)
        } else if wire.in_flight.len() > 1 && !wire.stalled {
            Some(wire.head_since + wire.slow_after(lanes))
        } else {
            None
        };
        if let Some(w) = wanted.filter(|w| *w != deadline) {
            deadline = w;
            timer.as_mut().reset(w.into());
        }
        tokio::select! {
            biased;
            r = server.io.read_frame(), if !wire.in_flight.is_empty() => {
                let Ok(Some(frame)) = r else { return false };
                on_frame(lanes, node, state, server, wire, frame);
                // Whatever else the server sent in the same read, before looking again.
                while server.io.has_buffered_frame() && !wire.in_flight.is_empty() {
                    let Ok(Some(frame)) = server.io.read_frame().await else { return false };
                    on_frame(lanes, node, state, server, wire, frame);
                }
            }
            r = rx.recv(), if wire.in_flight.len() < MAX_IN_FLIGHT => {
                let Some(first) = r else { return true };
                if wire.in_flight.is_empty() {
                    wire.head_since = Instant::now();
                }
                let mut next = Some(first);
                while let Some(req) = next {
                    if wire.stalled {
                        // Not written: it would only wait behind the slow read.
                        if let Some(reply) = req.reply {
                            let _ = reply.send(LaneReply::FallBack);
                            metrics::counter!("pgwarden_lane_handbacks_total").increment(1);
                        }
                        next = rx.try_recv().ok();
                        continue;
                    }
                    node.runtime.begin_query();
                    let flight = write(req, &mut server.prepared, &mut wire.stale, &mut wire.to_server);
                    wire.in_flight.push_back(flight);
                    next = if wire.in_flight.len() < MAX_IN_FLIGHT { rx.try_recv().ok() } else { None };
                }
            }
            _ = &mut timer, if wanted.is_some() => {
                if wire.in_flight.is_empty() {
                    return true;
                }
                // Nothing came from the server by the deadline (replies waiting to be
                // read win the select): the head is still running there.
                wire.stalled = true;
                state.stalled.store(true, Ordering::Relaxed);
                release(&mut wire.in_flight);
            }
        }
        if !wire.to_server.is_empty() {
            if server.io.write_all(&wire.to_server).await.is_err()
                || server.io.flush().await.is_err()
            {
                return false;
            }
            wire.to_server.clear();
        }
    }
}

/// One message from the server, for the read at the head; its ReadyForQuery ends it.
fn on_frame(
    lanes: &Lanes,
    node: &Node,
    state: &LaneState,
    server: &mut Server,
    wire: &mut LaneConn,
    frame: Frame,
) {
    if frame.tag != READY_FOR_QUERY_TAG {
        if let Some(flight) = wire.in_flight.front_mut() {
            on_server(
                flight,
                frame.tag,
                frame.data,
                &mut server.prepared,
                &mut wire.stale,
            );
        }
        return;
    }
    let Some(flight) = wire.in_flight.pop_front() else {
        return;
    };
    node.runtime.end_query();
    let now = Instant::now();
    let took = now - wire.head_since;
    let slow = wire.slow_after(lanes);
    if flight.too_big {
        lanes.mark_slow(flight.req.key, Why::TooBig);
    } else if took >= slow {
        lanes.mark_slow(flight.req.key, Why::Slow);
    }
    wire.usual_us = fold_usual(wire.usual_us, took, slow);
    wire.answered = (wire.answered + 1).min(WARM_UP);
    wire.head_since = now;
    if wire.stalled {
        wire.stalled = false;
        state.stalled.store(false, Ordering::Relaxed);
    }
    finish(lanes, flight, frame.data);
}

impl LaneConn {
    /// How long the head may run before it counts as slow.
    fn slow_after(&self, lanes: &Lanes) -> Duration {
        lane_threshold(lanes.slow_after(), self.usual_us, self.answered)
    }
}

/// The slow threshold of a lane that has answered `answered` reads.
fn lane_threshold(base: Duration, usual_us: u64, answered: u32) -> Duration {
    if answered < WARM_UP {
        // A new lane's first reads (new backend, statements to prepare, often a burst
        // of logins around them) say little about what is usual; a configured
        // threshold above the warm-up's still holds.
        return base.max(WARM_UP_SLOW);
    }
    slow_threshold(base, usual_us)
}

/// A read is slow past `base` and ten times what reads usually take.
fn slow_threshold(base: Duration, usual_us: u64) -> Duration {
    base.max(Duration::from_micros(usual_us.saturating_mul(10)))
}

/// The moving average of read times with one more read. A slow read counts at the
/// threshold: one long report does not make the next one look usual.
fn fold_usual(usual_us: u64, took: Duration, threshold: Duration) -> u64 {
    let sample = took.min(threshold).as_micros() as u64;
    if usual_us == 0 {
        sample
    } else {
        (usual_us * 7 + sample) / 8
    }
}

/// The read at the head runs long: the reads behind it are handed back to their
/// sessions, which serve them the usual way at once. They have no effect to undo, so
/// running them twice (once more here, later) harms nobody; their replies are dropped.
fn release(in_flight: &mut VecDeque<Flight>) {
    for f in in_flight.iter_mut().skip(1) {
        if let Some(reply) = f.reply.take() {
            let _ = reply.send(LaneReply::FallBack);
            metrics::counter!("pgwarden_lane_handbacks_total").increment(1);
        }
    }
}

/// Queues one request for the server: Closes of evicted or stale statements, the Parse
/// of the statement it needs if the connection lacks it, its own messages, Sync.
fn write(
    mut req: LaneRequest,
    prepared: &mut PreparedSet,
    stale: &mut Vec<Arc<str>>,
    to_server: &mut BytesMut,
) -> Flight {
    let mut closes = 0;
    for name in stale.drain(..) {
        to_server::close_statement(to_server, &name);
        closes += 1;
    }
    let mut parse = None;
    let name = req.ensure.name();
    if !prepared.touch(name) {
        let name: Arc<str> = name.into();
        if let Some(evicted) = prepared.insert(name.clone()) {
            to_server::close_statement(to_server, &evicted);
            closes += 1;
        }
        req.ensure.put_parse(to_server);
        parse = Some(name);
    }
    to_server.extend_from_slice(&req.msgs);
    to_server::sync(to_server);
    let mut out = BytesMut::new();
    if req.shape == Shape::Renamed {
        // The client's Parse: the statement exists (or was just created) under its name.
        // The server's replies are copied in behind it: room for a short read's whole
        // reply up front, not a regrowth per message.
        out.reserve(RENAMED_REPLY);
        out.extend_from_slice(&to_client::PARSE_COMPLETE);
    }
    Flight {
        reply: req.reply.take(),
        req,
        out,
        closes,
        parse,
        bound: false,
        fall_back: false,
        too_big: false,
    }
}

/// Accounts for one server message of the request at the head; what the client would
/// not have seen from PostgreSQL itself is left out of its reply.
fn on_server(
    f: &mut Flight,
    tag: u8,
    data: BytesMut,
    prepared: &mut PreparedSet,
    stale: &mut Vec<Arc<str>>,
) {
    let lifted = f.req.shape == Shape::Lifted;
    let forward = match tag {
        CLOSE_COMPLETE_TAG if f.closes > 0 => {
            f.closes -= 1;
            false
        }
        PARSE_COMPLETE_TAG if f.parse.is_some() => {
            f.parse = None;
            false
        }
        BIND_COMPLETE_TAG => {
            f.bound = true;
            !lifted
        }
        NO_DATA_TAG => !lifted,
        ERROR_RESPONSE_TAG => {
            let early =
                f.req.shape.may_fall_back() && kept::early_error_falls_back(f.bound, &data[5..]);
            if let Some(name) = f.parse.take() {
                // The lane's Parse failed: the statement was never created.
                prepared.remove(&name);
            } else if early {
                // The statement went stale (a table change): closed with the next
                // request, so the next use prepares it anew.
                let name = f.req.ensure.name();
                prepared.remove(name);
                stale.push(name.into());
            }
            f.fall_back |= early;
            !early
        }
        _ => true,
    };
    if forward && !f.fall_back {
        f.out.unsplit(data);
        if f.out.len() > MAX_REPLY {
            // A lane holds a reply until it is whole; the usual path streams it.
            f.fall_back = true;
            f.too_big = true;
            f.out = BytesMut::new();
        }
    }
}

/// The request's ReadyForQuery came: its client gets its reply, or runs it as sent.
fn finish(lanes: &Lanes, mut f: Flight, ready: BytesMut) {
    let Some(to) = f.reply.take() else { return };
    let reply = if f.fall_back {
        LaneReply::FallBack
    } else {
        // Autocommit reads: the client is idle again, as PostgreSQL would say. The
        // server's own ReadyForQuery says so too, and follows the reply in the read
        // buffer: passing it on joins the two without a copy.
        if ready[..] == to_client::READY_IDLE {
            f.out.unsplit(ready);
        } else {
            f.out.extend_from_slice(&to_client::READY_IDLE);
        }
        lanes.count_served();
        LaneReply::Done(f.out)
    };
    let _ = to.send(reply);
}

impl Ensure {
    /// The server statement the request needs.
    fn name(&self) -> &str {
        match self {
            Ensure::Lifted { name, .. } => name,
            Ensure::Named { name, .. } => name,
        }
    }

    /// Writes the Parse that creates it.
    fn put_parse(&self, to_server: &mut BytesMut) {
        match self {
            Ensure::Lifted { name, lifted } => auto_prepare::put_parse(name, lifted, to_server),
            Ensure::Named { parse, .. } => to_server.extend_from_slice(parse),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_is_slow_only_against_what_is_usual_on_its_lane() {
        let base = Duration::from_millis(20);
        let ms = Duration::from_millis;
        // Quick reads (~100 µs): 20 ms is slow.
        let mut usual = 0;
        for _ in 0..50 {
            usual = fold_usual(
                usual,
                Duration::from_micros(100),
                slow_threshold(base, usual),
            );
        }
        assert_eq!(slow_threshold(base, usual), base);
        // A 3 s report counts at the threshold: the reads after it are judged as before.
        usual = fold_usual(usual, ms(3000), slow_threshold(base, usual));
        assert!(slow_threshold(base, usual) <= ms(30), "{usual}");
        // Overload: every read takes ~5 ms; then only ten times that is slow.
        for _ in 0..50 {
            usual = fold_usual(usual, ms(5), slow_threshold(base, usual));
        }
        let t = slow_threshold(base, usual);
        assert!(t >= ms(45) && t <= ms(50), "{t:?}");
    }

    #[test]
    fn a_new_lane_counts_reads_slow_past_a_second_or_the_configured_threshold() {
        let ms = Duration::from_millis;
        assert_eq!(lane_threshold(ms(20), 0, 0), WARM_UP_SLOW);
        assert_eq!(lane_threshold(ms(20), 100, WARM_UP - 1), WARM_UP_SLOW);
        // A threshold configured above the warm-up's holds from the first read.
        assert_eq!(lane_threshold(ms(5_000), 0, 0), ms(5_000));
        // Warmed up: the configured threshold, or ten times what is usual.
        assert_eq!(lane_threshold(ms(20), 100, WARM_UP), ms(20));
        assert_eq!(lane_threshold(ms(20), 5_000, WARM_UP), ms(50));
    }
}

#[cfg(test)]
#[path = "task_flight_tests.rs"]
mod flight_tests;
