//! Shared read lanes (`pool.multiplex_reads`): autocommit reads on a replica are queued
//! per (replica, session settings) and written, several clients' at a time and without
//! waiting for earlier replies, on the lane's one server connection (see lane_task).
//! One busy backend per replica then serves many clients, never waiting on the proxy
//! between their reads, and under load reads several per wakeup. A lane is only worth
//! it when reads overlap, so by default a read takes one only while the replica is
//! already busy; statements seen slow on a lane stay off lanes.

mod slow;
mod task;

use crate::admin::counters::ReadDecision;
use crate::config::{MultiplexReads, PoolMode};
use crate::consistency::LagBudget;
pub(crate) use crate::engine::exchange::kept::Shape;
use crate::engine::exchange::{auto_prepare, kept};
use crate::engine::plan::Needed;
use crate::engine::{give_back, Engine, Server};
use crate::protocol::tags::frontend::{QUERY_TAG, SYNC_TAG};
use crate::protocol::{sqlstate, to_client, views};
use crate::router::analysis::Analysis;
use crate::router::parameterize::{Lift, Parameterized};
use crate::router::plan::{Plan, Route};
use crate::topology::balancer::Draw;
use crate::topology::{choose, Choice, Node};
use bytes::{Bytes, BytesMut};
use slow::{SlowStatements, Why};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Requests waiting for a lane, at most; beyond, readers take the usual path.
const QUEUE: usize = 256;
/// Lanes per node (one per distinct set of session settings), at most.
const MAX_LANES_PER_NODE: usize = 4;
/// How long after a read last found its replica busy reads keep taking lanes (auto).
const BUSY_WINDOW: Duration = Duration::from_millis(100);

/// The statement a lane's server must have before it runs a request.
pub(crate) enum Ensure {
    /// A simple Query's lifted form (see auto_prepare).
    Lifted {
        name: kept::Name,
        lifted: Parameterized,
    },
    /// A statement the client prepared: its server name and Parse.
    Named { name: Arc<str>, parse: Bytes },
}

/// One read for a lane.
pub(crate) struct LaneRequest {
    pub ensure: Ensure,
    /// The request's messages, without Sync.
    pub msgs: BytesMut,
    pub shape: Shape,
    /// Names the statement, for the record of slow ones.
    pub key: u64,
    /// Taken by the lane when it writes the request.
    pub reply: Option<oneshot::Sender<LaneReply>>,
}

pub(crate) enum LaneReply {
    /// The client's reply, ReadyForQuery included.
    Done(BytesMut),
    /// Run the client's Query as sent, the usual way.
    FallBack,
}

/// What sessions see of a running lane.
pub(crate) struct LaneState {
    /// The read at the head has run long (see lane_task): new reads keep off the lane
    /// until it ends.
    pub stalled: AtomicBool,
}

struct Lane {
    node: String,
    settings: u64,
    tx: mpsc::Sender<LaneRequest>,
    state: Arc<LaneState>,
}

pub struct Lanes {
    // Held only to look up, insert or remove, never across an await.
    map: Mutex<Vec<Lane>>,
    /// Statements that ran slow on a lane, kept off lanes for a while.
    slow: SlowStatements,
    slow_after: Duration,
    epoch: Instant,
    /// Reads answered on a lane so far.
    served: AtomicU64,
}

/// The session settings a lane is for; application_name only labels the connection.
fn settings_key(params: &[(String, String)]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (k, v) in params {
        if !k.eq_ignore_ascii_case("application_name") {
            (k, v).hash(&mut h);
        }
    }
    h.finish()
}

enum Found {
    Lane(mpsc::Sender<LaneRequest>, Arc<LaneState>),
    /// None yet for these settings, and room for one: the caller opens it.
    Open,
    /// Too many lanes on this node already.
    Full,
}

impl Lanes {
    pub fn new(slow_after: Duration) -> Self {
        Lanes {
            map: Mutex::default(),
            slow: SlowStatements::default(),
            slow_after,
            epoch: Instant::now(),
            served: AtomicU64::new(0),
        }
    }

    fn find(&self, node: &str, settings: u64, max_lanes: usize) -> Found {
        let map = self.map.lock().expect("lanes lock");
        if let Some(l) = map
            .iter()
            .find(|l| l.node == node && l.settings == settings)
        {
            return Found::Lane(l.tx.clone(), l.state.clone());
        }
        if map.iter().filter(|l| l.node == node).count() >= max_lanes {
            Found::Full
        } else {
            Found::Open
        }
    }

    /// Starts a lane on `server` (checked out with the session's settings).
    fn open(
        self: &Arc<Self>,
        node: &Arc<Node>,
        settings: u64,
        server: Server,
    ) -> (mpsc::Sender<LaneRequest>, Arc<LaneState>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut map = self.map.lock().expect("lanes lock");
        if let Some(l) = map
            .iter()
            .find(|l| l.node == node.name && l.settings == settings)
        {
            // Another session opened it meanwhile: this server goes back.
            give_back(server);
            return (l.tx.clone(), l.state.clone());
        }
        let state = Arc::new(LaneState {
            stalled: AtomicBool::new(false),
        });
        map.push(Lane {
            node: node.name.clone(),
            settings,
            tx: tx.clone(),
            state: state.clone(),
        });
        tokio::spawn(task::run(
            self.clone(),
            node.clone(),
            settings,
            state.clone(),
            server,
            rx,
        ));
        (tx, state)
    }

    /// Reads answered on a lane so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    pub(crate) fn count_served(&self) {
        self.served.fetch_add(1, Ordering::Relaxed);
    }

    /// Lanes open now.
    pub fn len(&self) -> usize {
        self.map.lock().expect("lanes lock").len()
    }

    /// The nodes with a lane open now, one entry per lane.
    pub fn nodes(&self) -> Vec<String> {
        let map = self.map.lock().expect("lanes lock");
        map.iter().map(|l| l.node.clone()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn close(&self, node: &str, settings: u64) {
        let mut map = self.map.lock().expect("lanes lock");
        map.retain(|l| !(l.node == node && l.settings == settings));
    }

    /// Microseconds on the lanes' clock (never 0).
    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64 + 1
    }

    pub(crate) fn slow_after(&self) -> Duration {
        self.slow_after
    }

    /// A statement ran long on a lane (see lane_task): for a while (see lane_slow) it
    /// runs the usual way, where it delays nobody else's read.
    pub(crate) fn mark_slow(&self, key: u64, why: Why) {
        if let Some(off) = self.slow.mark(key, why, Instant::now()) {
            tracing::debug!(
                key,
                ?off,
                "statement kept off shared read lanes: it ran slow on one"
            );
            metrics::counter!("pgwarden_lane_slow_statements_total").increment(1);
        }
    }

    /// Statements seen slow on a lane and still remembered (for tests and the console).
    pub fn slow_statements(&self) -> usize {
        self.slow.remembered()
    }
}

/// Whether a read may go to a lane: one SELECT that changes no session state.
fn lane_eligible(a: &Analysis) -> bool {
    !a.is_write() && auto_prepare::eligible(a)
}

impl Engine {
    /// Serves the request on a shared read lane when it may be: a read routed to a
    /// replica (a simple Query that auto_prepare can lift, or an extended-protocol read
    /// of one statement), from a client in transaction pooling and not pinned, on a
    /// replica that has replayed what it needs. Returns the reply, or None to serve it
    /// the usual way (nothing has reached the client then).
    pub(crate) async fn lane_read(
        &mut self,
        plan: &Plan,
        needed: &mut Needed,
        req: &BytesMut,
        tag: u8,
    ) -> Option<BytesMut> {
        let cfg = self.config.clone();
        let shared = &*self.shared.clone();
        if cfg.pool.multiplex_reads == MultiplexReads::Off
            || plan.route != Route::Replica
            || self.session.mode != PoolMode::Transaction
            || self.session.pinned.is_some()
        {
            return None;
        }
        let need = LagBudget::of(&cfg.consistency).with(needed.min_position);
        let topo = shared.topology.load();
        // The node the usual path would take; the rotation moves on only if the lane
        // serves the read (else the usual path moves it).
        let draw = self.session.draw(false);
        let choice = Choice::from_config(&cfg, false);
        // No replica has the read's position and waiting cannot pay: the usual path
        // would take the primary at once, so the read may share a lane there as well
        // (a committed write is visible to every new snapshot on the primary).
        let (node, at_once) = match choose(&topo, &shared.balancer, choice, &need, &[], draw) {
            Some(node) => (node.clone(), false),
            None if topo.has_usable_replica() && self.waiting_cannot_pay(&topo, &need) => {
                (topo.primary()?.clone(), true)
            }
            None => return None,
        };
        // Alone on the replica a read gains nothing from a lane, only two hand-offs;
        // among others it does, even at the moments it finds the replica idle.
        if cfg.pool.multiplex_reads == MultiplexReads::Auto
            && !node
                .runtime
                .recently_busy(shared.lanes.now_us(), BUSY_WINDOW.as_micros() as u64)
        {
            return None;
        }
        let request = self.lane_request(req, tag, &mut needed.lifted)?;
        if shared.lanes.slow.is_off(request.0.key, Instant::now()) {
            return None;
        }
        let settings = settings_key(&self.session.params);
        // A lane keeps its connection until idle: on the primary, where writes need
        // connections too, lanes take at most a quarter of the pool.
        let max_lanes = if at_once {
            MAX_LANES_PER_NODE.min(cfg.pool.size / 4)
        } else {
            MAX_LANES_PER_NODE
        };
        let (lane, state) = match shared.lanes.find(&node.name, settings, max_lanes) {
            Found::Lane(tx, state) => (tx, state),
            Found::Full => return None,
            Found::Open => {
                // The server is the lane's, not this client's to cancel.
                // Boxed: a lane opens rarely, and every read's future would carry it.
                let server = Box::pin(self.checkout_node_unwatched(&node)).await.ok()?;
                shared.lanes.open(&node, settings, server)
            }
        };
        if state.stalled.load(Ordering::Relaxed) {
            return None;
        }
        let (request, rx) = request;
        lane.try_send(request).ok()?;
        if !at_once && matches!(draw, Draw::Same { .. }) {
            shared.balancer.advance();
        }
        match self.await_lane(rx).await? {
            LaneReply::Done(out) => {
                shared.counters.read(if at_once {
                    ReadDecision::PrimaryAtOnce
                } else {
                    ReadDecision::Multiplexed
                });
                Some(out)
            }
            // The lane's statement went stale: the usual path runs the Query as sent.
            LaneReply::FallBack => None,
        }
    }

    /// The lane form of the request, and where its reply will come. A Query's
    /// parameterised form is taken from `lift` when routing found it.
    fn lane_request(
        &mut self,
        req: &BytesMut,
        tag: u8,
        lift: &mut Lift,
    ) -> Option<(LaneRequest, oneshot::Receiver<LaneReply>)> {
        let (reply, rx) = oneshot::channel();
        let request = match tag {
            QUERY_TAG if self.config.pool.auto_prepare => {
                let analysis = self.routed.clone()?;
                if !lane_eligible(&analysis) {
                    return None;
                }
                let body = req.get(5..)?;
                if matches!(lift, Lift::NotLiftable) {
                    return None;
                }
                let lifted = std::mem::take(lift).resolve(views::sql_of(QUERY_TAG, body)?)?;
                let key = kept::id_of(&lifted);
                let name = kept::name(key);
                let mut msgs = BytesMut::new();
                auto_prepare::put_execute(&name, &lifted, body, &mut msgs);
                LaneRequest {
                    ensure: Ensure::Lifted { name, lifted },
                    msgs,
                    shape: Shape::Lifted,
                    key,
                    reply: Some(reply),
                }
            }
            SYNC_TAG => {
                let read = self
                    .session
                    .statements
                    .lane_read(req, &self.shared.parse_cache)?;
                if !lane_eligible(&read.analysis) {
                    return None;
                }
                let (name, parse) = read.ensure;
                LaneRequest {
                    ensure: Ensure::Named { name, parse },
                    msgs: read.msgs,
                    shape: read.shape,
                    key: read.key,
                    reply: Some(reply),
                }
            }
            _ => return None,
        };
        Some((request, rx))
    }

    /// Waits for a lane's reply. A cancel meanwhile is answered here: the read has no
    /// effect to undo, and its reply, when it comes, is dropped. None: the lane could
    /// not serve it (its server failed), so the usual path must.
    async fn await_lane(&mut self, mut rx: oneshot::Receiver<LaneReply>) -> Option<LaneReply> {
        match self.answering_cancel(std::pin::Pin::new(&mut rx)).await {
            Some(reply) => reply.ok(),
            None => {
                let mut out = BytesMut::new();
                to_client::error(
                    &mut out,
                    "ERROR",
                    sqlstate::QUERY_CANCELED,
                    "canceling statement due to user request",
                );
                to_client::ready_for_query(&mut out, b'I');
                Some(LaneReply::Done(out))
            }
        }
    }
}
