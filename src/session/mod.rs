//! A client's session state, without I/O: who it is, its pool mode, the settings it
//! carries to every server connection, its routing and consistency overrides, what pins
//! it, its read-your-writes clock and its prepared statements; and the pure rules that
//! change them (sets.rs).

pub mod clock;
mod sets;

use crate::config::{ConsistencyMode, PoolMode, ResolvedUser};
use crate::engine::exchange::statements::ClientStatements;
use crate::router::analysis::PinReason;
use crate::router::plan::RouteOverride;
use crate::topology::balancer::Draw;
use clock::SessionClock;
use std::sync::Arc;

pub struct Session {
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
    /// This client's place among the replicas when reads are sticky.
    pub read_turn: Option<usize>,
    /// This client's weighted-random draw when reads are sticky.
    pub read_draw: f64,
    pub statements: ClientStatements,
    /// `SET pgwarden.cache = off` turns the result cache off for this session.
    pub cache: bool,
}

impl Session {
    /// The client keeps one server connection (session mode, or pinned).
    pub fn holds_server(&self) -> bool {
        self.mode == PoolMode::Session || self.pinned.is_some()
    }

    /// How this request picks among replicas: the client's fixed turn with sticky reads,
    /// else a fresh draw; `advance` moves the shared rotation on.
    pub fn draw(&self, advance: bool) -> Draw {
        match self.read_turn {
            Some(turn) => Draw::Client {
                turn,
                rand01: self.read_draw,
            },
            None if advance => Draw::Next {
                rand01: rand::random(),
            },
            None => Draw::Same {
                rand01: rand::random(),
            },
        }
    }
}

#[cfg(test)]
impl Session {
    /// A transaction-pooling session of user `app` on database `app`, in strict mode,
    /// started with `startup` (kept as SQL literals, as the login keeps them).
    pub(crate) fn for_tests(startup: &[(&str, &str)]) -> Session {
        Session {
            mode: PoolMode::Transaction,
            database: "app".into(),
            user: Arc::new(ResolvedUser {
                name: "app".into(),
                password: "app".into(),
                server_user: "app".into(),
                server_password: "app".into(),
            }),
            startup_params: startup
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            params: startup
                .iter()
                .map(|(k, v)| (k.to_string(), crate::backend::conn::quote_literal(v)))
                .collect(),
            route_override: RouteOverride::Auto,
            pinned: None,
            clock: Arc::default(),
            consistency: ConsistencyMode::Strict,
            read_turn: None,
            read_draw: 0.0,
            statements: ClientStatements::default(),
            cache: true,
        }
    }
}
