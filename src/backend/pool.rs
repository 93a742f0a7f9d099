//! deadpool pools of server connections, one per (database, user, node).

use super::conn::{connect, BackendError, ConnectSpec, ServerConn};
use super::positions::PositionSampler;
use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Startup ParameterStatus of the pool's last new connection, shared with logins.
pub type StartupParams = Arc<Mutex<Option<Vec<(String, String)>>>>;

pub struct Manager {
    spec: ConnectSpec,
    idle_check: Duration,
    /// Startup ParameterStatus of the last connection made, for client logins.
    startup_params: StartupParams,
}

impl managed::Manager for Manager {
    type Type = ServerConn;
    type Error = BackendError;

    async fn create(&self) -> Result<ServerConn, BackendError> {
        // Boxed: connecting (TLS, authentication) is the largest state a checkout can
        // reach, and every checkout future would otherwise carry it and be copied with
        // it per request; a new connection is rare next to a checkout.
        let conn = Box::pin(connect(&self.spec)).await?;
        *self.startup_params.lock().expect("params lock") = Some(conn.params.clone());
        Ok(conn)
    }

    async fn recycle(&self, conn: &mut ServerConn, _: &Metrics) -> RecycleResult<BackendError> {
        if conn.broken {
            return Err(RecycleError::message("connection marked broken"));
        }
        if conn.has_unexpected_input().await {
            return Err(RecycleError::message("server sent data while idle"));
        }
        if conn.last_used.elapsed() >= self.idle_check {
            // Boxed: rare next to a checkout, and its state would otherwise be copied
            // with every checkout future.
            Box::pin(conn.run_internal(""))
                .await
                .map_err(RecycleError::Backend)?;
        }
        Ok(())
    }

    fn detach(&self, _conn: &mut ServerConn) {}
}

pub type ServerPool = managed::Pool<Manager>;

#[derive(Clone, Hash, PartialEq, Eq, Debug)]
pub struct PoolKey {
    pub database: String,
    pub user: String,
    pub node: String,
}

pub struct PoolSettings {
    pub size: usize,
    pub checkout_timeout: Duration,
    pub idle_check: Duration,
    /// Least time between two reads of a pool's commit positions.
    pub capture_interval: Duration,
}

/// A pool and what logins need from it without a checkout.
#[derive(Clone)]
pub struct PoolEntry {
    pub pool: ServerPool,
    pub startup_params: StartupParams,
    /// Commit positions read on this pool, shared by its clients' commits.
    pub positions: Arc<PositionSampler>,
}

pub struct Pools {
    settings: PoolSettings,
    // Held only to look up or insert, never across an await. Keyed by a hash of the
    // three names so a lookup (one per request) allocates nothing.
    map: Mutex<HashMap<u64, Vec<(PoolKey, PoolEntry)>>>,
}

fn slot(database: &str, user: &str, node: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (database, user, node).hash(&mut h);
    h.finish()
}

impl Pools {
    pub fn new(settings: PoolSettings) -> Self {
        Pools {
            settings,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The pool of (database, user, node), made with `spec` on first use.
    pub fn get(
        &self,
        database: &str,
        user: &str,
        node: &str,
        spec: impl FnOnce() -> ConnectSpec,
    ) -> PoolEntry {
        let slot = slot(database, user, node);
        let mut map = self.map.lock().expect("pools lock");
        let same = |k: &PoolKey| k.database == database && k.user == user && k.node == node;
        if let Some((_, e)) = map.get(&slot).and_then(|v| v.iter().find(|(k, _)| same(k))) {
            return e.clone();
        }
        let startup_params = Arc::new(Mutex::new(None));
        let manager = Manager {
            spec: spec(),
            idle_check: self.settings.idle_check,
            startup_params: startup_params.clone(),
        };
        let pool = managed::Pool::builder(manager)
            .max_size(self.settings.size)
            .wait_timeout(Some(self.settings.checkout_timeout))
            // Most recently used first, as PgBouncer does: a light load keeps reusing a
            // few warm server processes instead of cycling through all of them.
            .queue_mode(managed::QueueMode::Lifo)
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .expect("pool with a runtime and timeouts builds");
        let entry = PoolEntry {
            pool,
            startup_params,
            positions: Arc::new(PositionSampler::new(self.settings.capture_interval)),
        };
        let key = PoolKey {
            database: database.to_owned(),
            user: user.to_owned(),
            node: node.to_owned(),
        };
        map.entry(slot).or_default().push((key, entry.clone()));
        entry
    }

    pub fn all(&self) -> Vec<(PoolKey, PoolEntry)> {
        let map = self.map.lock().expect("pools lock");
        map.values().flatten().cloned().collect()
    }
}

/// Marks the time a connection goes back, so the idle health check knows its age.
pub fn touch(conn: &mut ServerConn) {
    conn.last_used = Instant::now();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerTlsMode;

    /// Every request awaits a checkout inside its own future, which is moved once per
    /// request; the connect state (TLS, authentication) inside it made that future
    /// 6.3 KB in a release build and the request's 14.5 KB. Boxed, it is rare and apart.
    #[test]
    fn a_checkout_future_does_not_carry_a_connection_attempt() {
        let pools = Pools::new(PoolSettings {
            size: 1,
            checkout_timeout: Duration::from_secs(1),
            idle_check: Duration::from_secs(1),
            capture_interval: Duration::ZERO,
        });
        let spec = || ConnectSpec {
            node: "node".into(),
            host: "127.0.0.1".into(),
            port: 1,
            user: "user".into(),
            password: String::new(),
            database: "db".into(),
            tls: ServerTlsMode::Disable,
            connect_timeout: Duration::from_secs(1),
            prepared_capacity: 1,
            application_name: "test",
        };
        let entry = pools.get("db", "user", "node", spec);
        let checkout = entry.pool.get();
        let spec = spec();
        let connect = connect(&spec);
        let (checkout, connect) = (size_of_val(&checkout), size_of_val(&connect));
        println!("checkout future {checkout} B, connect future {connect} B");
        assert!(
            checkout < 2 * connect,
            "a checkout future ({checkout} B) holds a connect future ({connect} B)"
        );
    }
}
