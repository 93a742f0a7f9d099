//! Checking out a server connection for the client: from a pool, brought to the
//! client's parameters, with the client's cancel pointed at it; giving it back.

use super::{Engine, Server};
use crate::backend::pool::touch;
use crate::backend::pool::ServerPool;
use crate::backend::BackendError;
use crate::frontend::cancel::CancelTarget;
use crate::protocol::sqlstate;
use bytes::BytesMut;
use deadpool::managed::{Object, PoolError, TimeoutType, Timeouts};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

impl Engine {
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
            if server.params_applied(&self.session.params) {
                return Ok(server);
            }
            let Err(e) = Box::pin(server.apply_params(&self.session.params)).await else {
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
