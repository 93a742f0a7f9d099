//! One client from login to disconnect: authentication, server parameters, then the
//! request loop that buffers each request until it is complete before a checkout.

use super::commit::SessionClock;
use super::exchange::statements::ClientStatements;
use crate::backend::conn::quote_literal;
use crate::backend::pool::ServerPool;
use crate::backend::pool::{touch, Manager, PoolEntry};
use crate::backend::{BackendError, ConnectSpec};
use crate::config::{Config, ConsistencyMode, PoolMode, ResolvedUser};
use crate::frontend::auth::{self, AuthUser};
use crate::frontend::cancel::{CancelSlot, CancelTarget};
use crate::protocol::{sqlstate, to_client, FrameError, FramedStream, Stream};
use crate::router::analysis::PinReason;
use crate::router::plan::{Route, RouteOverride};
use crate::state::Shared;
use bytes::BytesMut;
use deadpool::managed::{Object, PoolError, TimeoutType, Timeouts};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

pub(crate) type Server = Object<Manager>;

/// Startup parameters that are session state, not connection identity; they are
/// replayed on whichever server connection the client lands on.
const NOT_REPLAYED: &[&str] = &["user", "database", "replication", "options"];

pub(crate) struct Session {
    pub client: FramedStream,
    pub shared: Arc<Shared>,
    /// The config in force, taken again at the start of each request.
    pub config: Arc<Config>,
    /// The primary's pool, used at login.
    pub pool: PoolEntry,
    pub mode: PoolMode,
    pub database: String,
    pub user: Arc<ResolvedUser>,
    /// Startup parameters as the client sent them (reported back at login).
    pub startup_params: Vec<(String, String)>,
    /// Session settings to carry to every server connection, as SQL values.
    pub params: Vec<(String, String)>,
    pub route_override: RouteOverride,
    /// Session state that cannot move between connections was created.
    pub pinned: Option<PinReason>,
    /// Commit position of this session's last write (read-your-writes).
    pub clock: Arc<SessionClock>,
    pub consistency: ConsistencyMode,
    /// The request being routed runs something (Query or Execute), not just a prepare.
    pub request_executes: bool,
    /// This client's place among the replicas when reads are sticky.
    pub read_turn: Option<usize>,
    /// This client's weighted-random draw when reads are sticky.
    pub read_draw: f64,
    /// Where the attached server is ("primary"/"replica"), for metrics.
    pub attached_route: Route,
    /// Bytes written to the client so far; a read may only be retried elsewhere
    /// while this has not moved.
    pub flushed: u64,
    pub cancel: CancelSlot,
    /// Bytes queued for the client, written in batches.
    pub out: BytesMut,
    pub statements: ClientStatements,
    /// The analysis route() made of a request that is one Query, taken by the relay
    /// when it forwards that Query so the SQL is not analysed twice.
    pub routed: Option<Arc<crate::router::analysis::Analysis>>,
}

pub async fn run(
    stream: Stream,
    params: BTreeMap<String, String>,
    shared: Arc<Shared>,
    login_timeout: Duration,
) -> anyhow::Result<()> {
    // Boxed, so the task of an idle client keeps the Session and nothing of the login.
    let (mut session, pid, secret) =
        Box::pin(open(stream, params, shared.clone(), login_timeout)).await?;
    let result = async {
        // A server kept from the login (session mode) is boxed at once: held inline, it
        // would take its size in every idle client's task.
        let held = Box::pin(session.login(pid, secret)).await?.map(Box::new);
        match held {
            Some(server) => Box::pin(session.held(*server, BytesMut::new())).await,
            None => Box::pin(session.serve()).await,
        }
    }
    .await;
    shared.cancels.unregister(pid);
    result
}

/// Authenticates the client and builds its Session, with its cancel key registered.
async fn open(
    stream: Stream,
    params: BTreeMap<String, String>,
    shared: Arc<Shared>,
    login_timeout: Duration,
) -> anyhow::Result<(Session, i32, i32)> {
    let config = shared.config_arc();
    let mut client = FramedStream::new(stream, config.limits.max_message_bytes);
    let user_name = params.get("user").cloned().unwrap_or_default();
    let database = params
        .get("database")
        .cloned()
        .unwrap_or_else(|| user_name.clone());
    let entry = shared.users.get(&user_name);
    let auth_user = entry.map(|e| AuthUser {
        name: &e.user.name,
        password: &e.user.password,
        verifier: &e.verifier,
    });
    let authed = tokio::time::timeout(
        login_timeout,
        // Boxed: SCRAM state is not kept in the task for the whole session.
        Box::pin(auth::authenticate(
            &mut client,
            config.auth.method,
            auth_user,
            &user_name,
        )),
    )
    .await;
    match authed {
        Ok(Ok(())) => {}
        Ok(Err(f)) => {
            let _ = client
                .write_all(&to_client::fatal(f.code, &f.message))
                .await;
            let _ = client.flush().await;
            metrics::counter!("pgwarden_auth_failures_total").increment(1);
            anyhow::bail!("authentication of {user_name:?} failed: {}", f.message);
        }
        Err(_) => anyhow::bail!("authentication of {user_name:?} timed out"),
    }
    let entry = entry.expect("authenticated users exist");
    let user = &entry.user;

    let primary = config.primary().clone();
    let pool = shared
        .pools
        .get(&database, &user.name, &primary.name, || ConnectSpec {
            node: primary.name.clone(),
            host: primary.host.clone(),
            port: primary.port,
            user: user.server_user.clone(),
            password: user.server_password.clone(),
            database: database.clone(),
            tls: config.server_tls,
            connect_timeout: Duration::from_millis(config.pool.connect_timeout_ms),
            prepared_capacity: config.pool.prepared_statements_per_server,
            application_name: "pgwarden",
        });
    let options = params.get("options").cloned().unwrap_or_default();
    let mut startup_params: Vec<(String, String)> = params
        .into_iter()
        .filter(|(k, _)| !NOT_REPLAYED.contains(&k.as_str()))
        .collect();
    match crate::frontend::options::settings(&options) {
        Ok(settings) => startup_params.extend(settings),
        Err(msg) => {
            let _ = client
                .write_all(&to_client::fatal(sqlstate::PROTOCOL_VIOLATION, &msg))
                .await;
            let _ = client.flush().await;
            anyhow::bail!("startup options: {msg}");
        }
    }
    let replayed = startup_params
        .iter()
        .map(|(k, v)| (k.clone(), quote_literal(v)))
        .collect();
    let (pid, secret, cancel) = shared.cancels.register();
    let session = Session {
        client,
        mode: config.pool.mode,
        shared: shared.clone(),
        pool,
        database,
        user: entry.user.clone(),
        startup_params,
        params: replayed,
        route_override: RouteOverride::Auto,
        pinned: None,
        clock: Arc::default(),
        consistency: config.consistency.mode,
        request_executes: true,
        read_turn: config
            .routing
            .sticky_reads
            .then(|| shared.balancer.client_turn()),
        read_draw: rand::random(),
        attached_route: Route::Primary,
        flushed: 0,
        cancel,
        out: BytesMut::new(),
        statements: ClientStatements::default(),
        routed: None,
        config,
    };
    Ok((session, pid, secret))
}

impl Session {
    /// Finishes the login: AuthenticationOk, the server's parameters as this client
    /// will see them, our own cancel key, ReadyForQuery. A server connection is only
    /// checked out when this pool has never connected (that also surfaces errors such
    /// as an unknown database) or in session mode.
    async fn login(&mut self, pid: i32, secret: i32) -> anyhow::Result<Option<Server>> {
        let cached = self
            .pool
            .startup_params
            .lock()
            .expect("params lock")
            .clone();
        let mut server = None;
        let server_params = match cached {
            Some(p) if self.mode == PoolMode::Transaction => p,
            _ => {
                let mut s = match self.checkout().await {
                    Ok(s) => s,
                    Err(e) => {
                        let raw = login_error(&e);
                        let _ = self.client.write_all(&raw).await;
                        let _ = self.client.flush().await;
                        anyhow::bail!("login: {e}");
                    }
                };
                let params = s.params.clone();
                if self.mode == PoolMode::Session {
                    server = Some(s);
                } else {
                    touch(&mut s);
                }
                params
            }
        };
        let mut out = BytesMut::new();
        to_client::auth(&mut out, &pgwire::messages::startup::Authentication::Ok);
        for (name, value) in &server_params {
            let value = self
                .startup_params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
                .unwrap_or(value);
            to_client::parameter_status(&mut out, name, value);
        }
        to_client::backend_key_data(&mut out, pid, secret);
        to_client::ready_for_query(&mut out, b'I');
        self.client.write_all(&out).await?;
        self.client.flush().await?;
        Ok(server)
    }

    /// Takes the config in force for the next request: one pointer compare while it
    /// has not changed. (Pool mode and consistency mode stay those of the login.)
    pub(crate) fn refresh_config(&mut self) {
        if !self.shared.config_is(&self.config) {
            self.config = self.shared.config_arc();
        }
    }

    /// Checks out a server connection and brings it to this client's parameters.
    pub(crate) async fn checkout(&mut self) -> Result<Server, CheckoutError> {
        let pool = self.pool.pool.clone();
        self.checkout_from(&pool).await
    }

    /// Checks out a server connection for this client's request: a cancel from the
    /// client goes to it from now on.
    pub(crate) async fn checkout_from(
        &mut self,
        pool: &ServerPool,
    ) -> Result<Server, CheckoutError> {
        let server = self.checkout_unwatched(pool).await?;
        self.cancel_goes_to(&server);
        Ok(server)
    }

    /// Checks out a server connection without pointing the client's cancel at it: for
    /// the proxy's own use of it (a replay probe, a lane), or before the request is
    /// sure to run there.
    pub(crate) async fn checkout_unwatched(
        &mut self,
        pool: &ServerPool,
    ) -> Result<Server, CheckoutError> {
        // Without waiting when the pool has a connection to give; a wait can be cancelled.
        // The wait, and bringing a server to this client's parameters, are boxed: both
        // are rare next to a checkout, which is part of every request's future.
        let now = Timeouts {
            wait: Some(Duration::ZERO),
            ..pool.timeouts()
        };
        let mut retried = false;
        loop {
            let mut server = match pool.timeout_get(&now).await {
                Err(PoolError::Timeout(TimeoutType::Wait)) => {
                    Box::pin(self.wait_for_server(pool)).await?
                }
                got => got.map_err(CheckoutError::Pool)?,
            };
            if server.params_applied(&self.params) {
                return Ok(server);
            }
            let Err(e) = Box::pin(server.apply_params(&self.params)).await else {
                return Ok(server);
            };
            if !server.broken {
                return Err(CheckoutError::Params(e));
            }
            // A pooled connection the server dropped after the pool's idle check (a
            // terminated backend, a restart): nothing of the client's ran, and the node
            // may be fine, so one more connection is tried before the node is judged.
            let pooled = pooled(&server);
            let _ = Object::take(server);
            if retried || !pooled {
                return Err(CheckoutError::Params(e));
            }
            tracing::debug!(error = %e, "pooled server connection dropped; taking another");
            retried = true;
        }
    }

    /// A cancel from the client goes to `server` from now on.
    pub(crate) fn cancel_goes_to(&self, server: &Server) {
        *self.cancel.lock().expect("cancel slot lock") = Some(CancelTarget::Server {
            addr: server.addr.clone(),
            pid: server.pid,
            secret: server.secret,
        });
    }

    /// Waits for a server connection from an exhausted pool. A cancel meanwhile is
    /// answered at once: the request has not started, so there is nothing to undo.
    async fn wait_for_server(&mut self, pool: &ServerPool) -> Result<Server, CheckoutError> {
        let got = self.answering_cancel(std::pin::pin!(pool.get())).await;
        got.map_or(Err(CheckoutError::Canceled), |r| {
            r.map_err(CheckoutError::Pool)
        })
    }

    /// Runs `work` with the session itself as this client's cancel target: None when a
    /// cancel came first (`work` is dropped). For waits whose work has no effect to undo.
    /// The target before it is put back after, so waits can nest (a pool wait within
    /// a wait for a replica to catch up); a cancel of the inner wait is passed on to the
    /// outer one, whose caller may not see the inner one's result (a probe's checkout).
    /// `work` is pinned by the caller: moved in, a pool checkout would be held twice in
    /// this future (argument and select), kilobytes copied per request.
    pub(crate) async fn answering_cancel<T>(
        &self,
        work: Pin<&mut impl Future<Output = T>>,
    ) -> Option<T> {
        let cancelled = Arc::new(Notify::new());
        let before = self
            .cancel
            .lock()
            .expect("cancel slot lock")
            .replace(CancelTarget::Session(cancelled.clone()));
        let done = tokio::select! {
            biased;
            done = work => Some(done),
            _ = cancelled.notified() => None,
        };
        if let (None, Some(CancelTarget::Session(outer))) = (&done, &before) {
            outer.notify_one();
        }
        *self.cancel.lock().expect("cancel slot lock") = before;
        done
    }

    /// Makes the session itself this client's cancel target until `stop_answering_cancel`
    /// (or a checkout for the request) replaces it; a cancel meanwhile leaves a permit in
    /// the returned Notify.
    pub(crate) fn answer_cancel(&self) -> Arc<Notify> {
        let cancelled = Arc::new(Notify::new());
        *self.cancel.lock().expect("cancel slot lock") =
            Some(CancelTarget::Session(cancelled.clone()));
        cancelled
    }

    pub(crate) fn stop_answering_cancel(&self) {
        *self.cancel.lock().expect("cancel slot lock") = None;
    }

    /// Gives a server connection back (or discards it when its state is unknown).
    pub(crate) async fn release(&mut self, mut server: Server, reset: bool) {
        if reset && !server.broken {
            // Session mode hands a connection to an unrelated client next.
            // Boxed: rare, and every request's future would otherwise carry its state.
            if Box::pin(server.run_internal("DISCARD ALL")).await.is_ok() {
                server.applied.clear();
                server.prepared.clear();
            }
        }
        self.let_go(server);
    }

    /// The client no longer uses `server`: its cancel key stops pointing there, and the
    /// server goes back to its pool (or is discarded when its state is unknown).
    pub(crate) fn let_go(&mut self, server: Server) {
        *self.cancel.lock().expect("cancel slot lock") = None;
        give_back(server);
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

#[derive(Debug, thiserror::Error)]
pub(crate) enum CheckoutError {
    #[error("{0}")]
    Pool(PoolError<BackendError>),
    #[error("applying session parameters: {0}")]
    Params(BackendError),
    /// The client cancelled its request while it waited for a connection.
    #[error("cancelled while waiting for a server connection")]
    Canceled,
}

impl CheckoutError {
    /// The error a client sees: the server's own ErrorResponse when there is one.
    pub fn client_message(&self) -> (String, String, Option<BytesMut>) {
        match self {
            CheckoutError::Pool(PoolError::Timeout(_)) => (
                sqlstate::TOO_MANY_CONNECTIONS.into(),
                "no server connection became available within pool.checkout_timeout_ms".into(),
                None,
            ),
            CheckoutError::Pool(PoolError::Backend(BackendError::Server {
                code,
                message,
                raw,
            }))
            | CheckoutError::Params(BackendError::Server { code, message, raw }) => {
                (code.clone(), message.clone(), Some(raw.clone()))
            }
            CheckoutError::Canceled => (
                sqlstate::QUERY_CANCELED.into(),
                "canceling statement due to user request".into(),
                None,
            ),
            other => (
                sqlstate::CONNECTION_FAILURE.into(),
                format!("cannot reach the database server: {other}"),
                None,
            ),
        }
    }
}

/// The connection served an earlier request and was handed out again after the pool's
/// idle check; a server that dropped it after that check looks healthy until it is used.
pub(crate) fn pooled(server: &Server) -> bool {
    Object::metrics(server).recycle_count > 0
}

/// Returns a server to its pool, or discards it when its state is unknown.
pub(crate) fn give_back(mut server: Server) {
    if server.broken {
        let _ = Object::take(server);
        return;
    }
    touch(&mut server);
}

fn login_error(e: &CheckoutError) -> BytesMut {
    match e.client_message() {
        (_, _, Some(raw)) => raw,
        (code, message, None) => to_client::fatal(&code, &message),
    }
}
