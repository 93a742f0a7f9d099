//! Login: authenticates the client, builds its Engine and Session, and answers with
//! the server's parameters as this client will see them.

use super::checkout::CheckoutError;
use super::{Engine, Server};
use crate::backend::conn::quote_literal;
use crate::backend::pool::touch;
use crate::backend::ConnectSpec;
use crate::config::PoolMode;
use crate::engine::exchange::statements::ClientStatements;
use crate::frontend::auth::{self, AuthUser};
use crate::protocol::{sqlstate, to_client, FramedStream, Stream};
use crate::router::plan::{Route, RouteOverride};
use crate::session::Session;
use crate::state::Shared;
use bytes::BytesMut;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Startup parameters that are session state, not connection identity; they are
/// replayed on whichever server connection the client lands on.
const NOT_REPLAYED: &[&str] = &["user", "database", "replication", "options"];

/// Authenticates the client and builds its Engine, with its cancel key registered.
pub(super) async fn open(
    stream: Stream,
    params: BTreeMap<String, String>,
    shared: Arc<Shared>,
    login_timeout: Duration,
) -> anyhow::Result<(Engine, i32, i32)> {
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
        mode: config.pool.mode,
        database,
        user: entry.user.clone(),
        startup_params,
        params: replayed,
        route_override: RouteOverride::Auto,
        pinned: None,
        clock: Arc::default(),
        consistency: config.consistency.mode,
        read_turn: config
            .routing
            .sticky_reads
            .then(|| shared.balancer.client_turn()),
        read_draw: rand::random(),
        statements: ClientStatements::default(),
        cache: true,
    };
    let engine = Engine {
        client,
        shared: shared.clone(),
        pool,
        session,
        request_executes: true,
        attached_route: Route::Primary,
        flushed: 0,
        cancel,
        out: BytesMut::new(),
        routed: None,
        fill: None,
        config,
    };
    Ok((engine, pid, secret))
}

impl Engine {
    /// Finishes the login: AuthenticationOk, the server's parameters as this client
    /// will see them, our own cancel key, ReadyForQuery. A server connection is only
    /// checked out when this pool has never connected (that also surfaces errors such
    /// as an unknown database) or in session mode.
    pub(super) async fn login(&mut self, pid: i32, secret: i32) -> anyhow::Result<Option<Server>> {
        let cached = self
            .pool
            .startup_params
            .lock()
            .expect("params lock")
            .clone();
        let mut server = None;
        let server_params = match cached {
            Some(p) if self.session.mode == PoolMode::Transaction => p,
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
                if self.session.mode == PoolMode::Session {
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
                .session
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
}

fn login_error(e: &CheckoutError) -> BytesMut {
    match e.client_message() {
        (_, _, Some(raw)) => raw,
        (code, message, None) => to_client::fatal(&code, &message),
    }
}
