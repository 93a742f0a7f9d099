//! Shared read lanes (`pool.multiplex_reads`): autocommit reads that need no particular
//! replay position are queued per (replica, session settings) and written, several
//! clients' at a time and without waiting for earlier replies, on the lane's one server
//! connection; the replies go back to each client in order. PostgreSQL then reads many
//! queries per wakeup and never waits on the proxy between them.

use super::auto_prepare;
use super::counters::ReadDecision;
use super::pipeline::Pipeline;
use super::routing::Needed;
use super::session::{give_back, Server, Session};
use crate::config::PoolMode;
use crate::protocol::Frame;
use crate::router::parameterize::{parameterize, Parameterized};
use crate::router::plan::{Plan, Route};
use crate::topology::{balancer, Node, ReadNeed};
use bytes::BytesMut;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Requests in flight on a lane's server, at most.
const MAX_BATCH: usize = 32;
/// Requests waiting for a lane, at most; beyond, readers take the usual path.
const QUEUE: usize = 256;
/// A lane idle this long gives its server connection back to the pool.
const IDLE: Duration = Duration::from_secs(10);
/// Lanes per node (one per distinct set of session settings), at most.
const MAX_LANES_PER_NODE: usize = 4;

/// One read for a lane: the client's Query, its lifted form, where the reply goes.
struct LaneRequest {
    query: BytesMut,
    lifted: Parameterized,
    reply: oneshot::Sender<BytesMut>,
}

struct Lane {
    node: String,
    settings: u64,
    tx: mpsc::Sender<LaneRequest>,
}

#[derive(Default)]
pub struct Lanes {
    // Held only to look up, insert or remove, never across an await.
    map: Mutex<Vec<Lane>>,
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
    Lane(mpsc::Sender<LaneRequest>),
    /// None yet for these settings, and room for one: the caller opens it.
    Open,
    /// Too many lanes on this node already.
    Full,
}

impl Lanes {
    fn find(&self, node: &str, settings: u64) -> Found {
        let map = self.map.lock().expect("lanes lock");
        if let Some(l) = map
            .iter()
            .find(|l| l.node == node && l.settings == settings)
        {
            return Found::Lane(l.tx.clone());
        }
        if map.iter().filter(|l| l.node == node).count() >= MAX_LANES_PER_NODE {
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
    ) -> mpsc::Sender<LaneRequest> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut map = self.map.lock().expect("lanes lock");
        if let Some(l) = map
            .iter()
            .find(|l| l.node == node.name && l.settings == settings)
        {
            // Another session opened it meanwhile: this server goes back.
            give_back(server);
            return l.tx.clone();
        }
        map.push(Lane {
            node: node.name.clone(),
            settings,
            tx: tx.clone(),
        });
        tokio::spawn(run(self.clone(), node.clone(), settings, server, rx));
        tx
    }

    /// Reads answered on a lane so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Lanes open now.
    pub fn len(&self) -> usize {
        self.map.lock().expect("lanes lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn close(&self, node: &str, settings: u64) {
        let mut map = self.map.lock().expect("lanes lock");
        map.retain(|l| !(l.node == node && l.settings == settings));
    }
}

/// Sends a read down a lane; the reply, or None when the client must be served the
/// usual way (the lane is busy, gone, its server failed, or the statement must run as
/// sent). Nothing has reached the client either way.
async fn read(
    lane: &mpsc::Sender<LaneRequest>,
    query: BytesMut,
    lifted: Parameterized,
) -> Option<BytesMut> {
    let (reply, rx) = oneshot::channel();
    lane.try_send(LaneRequest {
        query,
        lifted,
        reply,
    })
    .ok()?;
    let out = rx.await.ok()?;
    (!out.is_empty()).then_some(out)
}

async fn run(
    lanes: Arc<Lanes>,
    node: Arc<Node>,
    settings: u64,
    mut server: Server,
    mut rx: mpsc::Receiver<LaneRequest>,
) {
    let mut waiting = VecDeque::new();
    let ok = serve(&lanes, &node, &mut server, &mut rx, &mut waiting).await;
    for _ in &waiting {
        node.runtime.end_query();
    }
    if !ok {
        server.broken = true;
    }
    lanes.close(&node.name, settings);
    // Requests still queued or in flight get no reply: their sessions serve them the
    // usual way.
    drop(rx);
    give_back(server);
}

/// Writes requests as they come, up to MAX_BATCH in flight, while the replies to
/// earlier ones are read and handed back in order: the server never waits for the
/// proxy between batches. Returns false when the server failed, true when idle.
async fn serve(
    lanes: &Lanes,
    node: &Node,
    server: &mut Server,
    rx: &mut mpsc::Receiver<LaneRequest>,
    waiting: &mut VecDeque<oneshot::Sender<BytesMut>>,
) -> bool {
    let mut pipeline = Pipeline::for_lane();
    let mut out = BytesMut::new();
    let mut to_server = BytesMut::new();
    loop {
        tokio::select! {
            biased;
            r = server.io.read_frame(), if !waiting.is_empty() => {
                let Ok(Some(frame)) = r else { return false };
                let tag = frame.tag;
                if pipeline.on_server(tag, frame.body(), &mut server.prepared, &mut out) {
                    out.unsplit(frame.data);
                }
                if tag == b'Z' {
                    let reply = waiting.pop_front().expect("a reply is owed");
                    node.runtime.end_query();
                    if pipeline.take_fell_back() {
                        // An empty reply: the session runs the client's Query the
                        // usual way.
                        out.clear();
                    } else {
                        lanes.served.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = reply.send(std::mem::take(&mut out));
                    // A hidden Close of a statement that went bad goes out now, in
                    // order with what the pipeline expects.
                    if let Some(close) = pipeline.take_resend() {
                        to_server.unsplit(close);
                    }
                }
            }
            r = rx.recv(), if waiting.len() < MAX_BATCH => {
                let Some(first) = r else { return true };
                let mut next = Some(first);
                while let Some(req) = next {
                    let frame = Frame { tag: b'Q', data: req.query };
                    auto_prepare::send(frame, &req.lifted, &mut server.prepared, &mut pipeline, &mut to_server);
                    waiting.push_back(req.reply);
                    node.runtime.begin_query();
                    next = if waiting.len() < MAX_BATCH { rx.try_recv().ok() } else { None };
                }
            }
            _ = tokio::time::sleep(IDLE), if waiting.is_empty() => return true,
        }
        if !to_server.is_empty() {
            if server.io.write_all(&to_server).await.is_err() || server.io.flush().await.is_err() {
                return false;
            }
            to_server.clear();
        }
    }
}

impl Session {
    /// Serves the request on a shared read lane when it may be: an autocommit Query
    /// that auto_prepare can lift, routed to a replica with no replay position to wait
    /// for, from a client in transaction pooling and not pinned. Returns the reply, or
    /// None to serve it the usual way.
    pub(super) async fn lane_read(
        &mut self,
        plan: &Plan,
        needed: &Needed,
        req: &BytesMut,
        tag: u8,
    ) -> Option<BytesMut> {
        let shared = self.shared.clone();
        let cfg = &shared.config;
        if !(cfg.pool.multiplex_reads && cfg.pool.auto_prepare)
            || tag != b'Q'
            || plan.route != Route::Replica
            || needed.min_position != 0
            || self.mode != PoolMode::Transaction
            || self.pinned.is_some()
        {
            return None;
        }
        let analysis = self.routed.clone()?;
        if analysis.is_write() || !auto_prepare::eligible(&analysis) {
            return None;
        }
        let sql = super::routing::sql_of(b'Q', req.get(5..)?)?;
        let lifted = parameterize(sql)?;
        let topo = shared.topology.load();
        let need = ReadNeed {
            min_position: 0,
            max_lag_bytes: cfg.consistency.max_lag_bytes,
            max_lag_ms: cfg.consistency.max_lag_ms,
        };
        let near = balancer::nearest(
            topo.eligible(false, &need, &[]),
            cfg.consistency.nearest_tolerance,
        );
        let node = shared
            .balancer
            .pick(cfg.routing.load_balance, &near, self.draw(true))?
            .clone();
        let settings = settings_key(&self.params);
        let lane = match shared.lanes.find(&node.name, settings) {
            Found::Lane(tx) => tx,
            Found::Full => return None,
            Found::Open => {
                let server = self.checkout_node(&node).await.ok()?;
                // The server is the lane's now, not this client's to cancel.
                *self.cancel.lock().expect("cancel slot lock") = None;
                shared.lanes.open(&node, settings, server)
            }
        };
        let reply = read(&lane, req.clone(), lifted).await?;
        shared.counters.read(ReadDecision::Multiplexed);
        Some(reply)
    }
}
