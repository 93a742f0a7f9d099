//! Where a request's steps meet. `run` takes a client from login to disconnect; each
//! complete request goes through `Engine::run` (run.rs): a local answer, or a plan, a
//! server (checkout, waits for a replica, retries), the exchange with it, and what
//! follows (commit capture).

mod cached;
mod checkout;
mod commit;
pub mod exchange;
mod fleet;
pub mod lanes;
mod local;
mod login;
mod placement;
mod plan;
mod relay;
mod retry;
mod run;
mod serve;

use crate::backend::pool::{Manager, PoolEntry};
use crate::config::Config;
use crate::frontend::cancel::CancelSlot;
use crate::protocol::{sqlstate, to_client, FrameError, FramedStream, Stream};
use crate::router::plan::Route;
use crate::session::Session;
use crate::state::Shared;
use bytes::BytesMut;
use deadpool::managed::Object;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub(crate) use checkout::{give_back, CheckoutError};

pub(crate) type Server = Object<Manager>;

/// One client's side of the proxy: its connection, what it has been sent, and its
/// session state (`session`, without I/O).
pub(crate) struct Engine {
    pub client: FramedStream,
    pub shared: Arc<Shared>,
    /// The config in force, taken again at the start of each request.
    pub config: Arc<Config>,
    /// The primary's pool, used at login.
    pub pool: PoolEntry,
    pub session: Session,
    /// The request being routed runs something (Query or Execute), not just a prepare.
    pub request_executes: bool,
    /// Where the attached server is ("primary"/"replica"), for metrics.
    pub attached_route: Route,
    /// Bytes written to the client so far; a read may only be retried elsewhere
    /// while this has not moved.
    pub flushed: u64,
    pub cancel: CancelSlot,
    /// Bytes queued for the client, written in batches.
    pub out: BytesMut,
    /// The analysis route() made of a request that is one Query, taken by the relay
    /// when it forwards that Query so the SQL is not analysed twice.
    pub routed: Option<Arc<crate::router::analysis::Analysis>>,
    /// The result cache's fill of the request in progress: what flush_out writes to the
    /// client is recorded into it (cached.rs).
    pub fill: Option<Box<crate::cache::Fill>>,
}

/// Serves one client that completed its startup, until it leaves.
pub async fn run(
    stream: Stream,
    params: BTreeMap<String, String>,
    shared: Arc<Shared>,
    login_timeout: Duration,
) -> anyhow::Result<()> {
    // Boxed, so the task of an idle client keeps the Engine and nothing of the login.
    let (mut engine, pid, secret) =
        Box::pin(login::open(stream, params, shared.clone(), login_timeout)).await?;
    let result = async {
        // A server kept from the login (session mode) is boxed at once: held inline, it
        // would take its size in every idle client's task.
        let held = Box::pin(engine.login(pid, secret)).await?.map(Box::new);
        match held {
            Some(server) => Box::pin(engine.held(*server, BytesMut::new())).await,
            None => Box::pin(engine.request_loop()).await,
        }
    }
    .await;
    shared.cancels.unregister(pid);
    result
}

impl Engine {
    /// Takes the config in force for the next request: one pointer compare while it
    /// has not changed. (Pool mode and consistency mode stay those of the login.)
    pub(crate) fn refresh_config(&mut self) {
        if !self.shared.config_is(&self.config) {
            self.config = self.shared.config_arc();
        }
    }

    pub(crate) async fn send_error(
        &mut self,
        severity: &str,
        code: &str,
        message: &str,
        ready: bool,
    ) -> std::io::Result<()> {
        to_client::error(&mut self.out, severity, code, message);
        if ready {
            to_client::ready_for_query(&mut self.out, b'I');
        }
        self.flush_out().await
    }

    pub(crate) async fn flush_out(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            if let Some(fill) = self.fill.as_mut() {
                let max = self
                    .shared
                    .cache
                    .as_ref()
                    .map_or(0, |c| c.max_entry_bytes());
                fill.record(&self.out, max);
            }
            self.flushed += self.out.len() as u64;
            self.client.write_all(&self.out).await?;
            self.client.flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Reports a client framing error the way PostgreSQL would, then gives up.
    pub(crate) async fn frame_error(&mut self, e: FrameError) -> anyhow::Error {
        if let FrameError::BadLength { len, limit } = e {
            let msg = format!(
                "invalid message length {len} (limit {limit}, see limits.max_message_bytes)"
            );
            let _ = self
                .send_error("FATAL", sqlstate::PROGRAM_LIMIT_EXCEEDED, &msg, false)
                .await;
            return anyhow::anyhow!(msg);
        }
        e.into()
    }
}
