//! Typed configuration, with the defaults a production proxy should start from.

use serde::Deserialize;
use std::net::SocketAddr;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address clients connect to.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// HTTP endpoint for /metrics and /healthz; absent disables it.
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    /// Threads serving clients (`pgwarden run`); 0: one per core, but one on a machine
    /// of 2 cores or fewer (see `worker_threads` in cli).
    #[serde(default)]
    pub worker_threads: usize,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub pool: PoolConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub server_tls: ServerTlsMode,
    #[serde(default)]
    pub routing: RoutingConfig,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub monitor: MonitorConfig,
    #[serde(default)]
    pub consistency: ConsistencyConfig,
    #[serde(default)]
    pub cache: super::CacheConfig,
    pub users: Vec<User>,
    pub nodes: Vec<Node>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_client_connections: usize,
    /// Largest message a client may send (bytes); PostgreSQL itself stops at 1 GiB.
    pub max_message_bytes: usize,
    /// A client must finish TLS, startup and authentication within this time.
    pub startup_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_client_connections: 1000,
            max_message_bytes: 64 * 1024 * 1024,
            startup_timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    Session,
    #[default]
    Transaction,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    pub mode: PoolMode,
    /// Server connections per (database, user, node).
    pub size: usize,
    /// How long a request waits for a free server connection before 53300.
    pub checkout_timeout_ms: u64,
    /// A connection idle longer than this is pinged before it is handed out.
    pub idle_check_ms: u64,
    /// Time allowed to open and authenticate one server connection.
    pub connect_timeout_ms: u64,
    /// Named prepared statements kept per server connection (least recently used
    /// are closed beyond this).
    pub prepared_statements_per_server: usize,
    /// Run simple-protocol statements whose integer literals can be lifted, and
    /// autocommit requests on the unnamed statement, as prepared statements on the
    /// server (parsed and planned once per connection).
    pub auto_prepare: bool,
    /// Serve autocommit reads on shared lanes: several clients' reads written at once
    /// on one server connection per replica.
    pub multiplex_reads: MultiplexReads,
    /// A statement that runs longer than this on a lane is kept off lanes from then on,
    /// and new reads do not queue behind a read running this long.
    pub multiplex_slow_ms: u64,
}

/// When reads take a shared lane (`pool.multiplex_reads`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "MultiplexSetting")]
pub enum MultiplexReads {
    Off,
    /// Only while the replica already runs another query: alone, a read gains nothing.
    Auto,
    Always,
}

/// `pool.multiplex_reads` as written: auto | always | off, or true (auto) / false (off).
#[derive(Deserialize)]
#[serde(untagged)]
enum MultiplexSetting {
    Flag(bool),
    Name(String),
}

impl TryFrom<MultiplexSetting> for MultiplexReads {
    type Error = String;
    fn try_from(s: MultiplexSetting) -> Result<Self, String> {
        match s {
            MultiplexSetting::Flag(true) => Ok(MultiplexReads::Auto),
            MultiplexSetting::Flag(false) => Ok(MultiplexReads::Off),
            MultiplexSetting::Name(n) => match n.to_ascii_lowercase().as_str() {
                "auto" | "on" => Ok(MultiplexReads::Auto),
                "always" => Ok(MultiplexReads::Always),
                "off" => Ok(MultiplexReads::Off),
                _ => Err(format!(
                    "unknown value {n:?} for multiplex_reads: expected auto, always or off"
                )),
            },
        }
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            mode: PoolMode::Transaction,
            size: 20,
            checkout_timeout_ms: 5_000,
            idle_check_ms: 30_000,
            connect_timeout_ms: 5_000,
            prepared_statements_per_server: 200,
            auto_prepare: true,
            multiplex_reads: MultiplexReads::Auto,
            multiplex_slow_ms: 20,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum AuthMethod {
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "md5")]
    Md5,
    #[serde(rename = "trust")]
    Trust,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub method: AuthMethod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ServerTlsMode {
    Disable,
    #[default]
    Prefer,
    Require,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    /// Password in clear; prefer `password_env`.
    #[serde(default)]
    pub password: Option<String>,
    /// Name of an environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Role used on the servers; defaults to `name`.
    #[serde(default)]
    pub server_user: Option<String>,
    /// Password used on the servers; defaults to the client password.
    #[serde(default)]
    pub server_password: Option<String>,
    #[serde(default)]
    pub server_password_env: Option<String>,
}

// Hand-written so secrets never reach logs through `{:?}`.
impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_env", &self.password_env)
            .field("server_user", &self.server_user)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalance {
    #[default]
    RoundRobin,
    LeastOutstanding,
    WeightedRandom,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Send reads to replicas; off sends everything to the primary.
    pub read_write_split: bool,
    pub load_balance: LoadBalance,
    /// Let the primary serve reads too, as one more member of the read set.
    pub primary_reads: bool,
    /// Keep each client's reads on one replica (chosen by the policy when it connects)
    /// while that replica stays eligible, instead of choosing per request.
    pub sticky_reads: bool,
    /// Functions that write, beyond the built-in list (nextval, setval, advisory locks...).
    pub write_functions: Vec<String>,
    /// Distinct query shapes whose analysis is kept.
    pub parse_cache_size: usize,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            read_write_split: true,
            load_balance: LoadBalance::RoundRobin,
            primary_reads: false,
            sticky_reads: true,
            write_functions: Vec::new(),
            parse_cache_size: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Ignored, kept so configs that set it still load: nodes are checked with every
    /// lag sample, each `consistency.lag_interval_ms` (see `Config::notices`).
    pub interval_ms: Option<u64>,
    /// A check that takes longer than this fails.
    pub timeout_ms: u64,
    /// How long a replica that failed stays out of the read set (a passing check
    /// readmits it earlier).
    pub ban_ms: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval_ms: None,
            timeout_ms: 1_000,
            ban_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ConsistencyMode {
    /// Read-your-writes plus the table clock: no read sees a table older than any
    /// write to it that a client of this proxy (or fleet) saw committed.
    #[default]
    Strict,
    /// Read-your-writes only.
    Session,
    /// Only the lag budget.
    Eventual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LagSource {
    /// pg_last_wal_replay_lsn() on each replica (streaming replication).
    #[default]
    Postgres,
    /// aurora_replica_status() on the writer; positions become times.
    Aurora,
}

/// When a read no replica can serve yet waits for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WaitPolicy {
    /// Only when a replica is estimated to have the position already, or within half a
    /// round trip to the primary (from its measured replay rate); else the primary now.
    #[default]
    Auto,
    /// Always, up to max_wait_ms (more reads on replicas, each slower).
    Always,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsistencyConfig {
    pub mode: ConsistencyMode,
    /// How long a read waits for a replica to catch up before it goes to the primary.
    pub max_wait_ms: u64,
    /// Whether a read waits at all when no replica can serve it yet.
    pub wait_for_replica: WaitPolicy,
    /// Replicas further behind than this (bytes of WAL) get no reads.
    pub max_lag_bytes: u64,
    /// Replicas further behind than this (ms) get no reads.
    pub max_lag_ms: u64,
    /// How often each replica's replay position is read.
    pub lag_interval_ms: u64,
    pub lag_source: LagSource,
    /// Among eligible replicas the nearest (lowest round-trip time) is used unless it
    /// has this many more queries in flight than the next one.
    pub nearest_tolerance: usize,
    /// Redis (or ElastiCache) URL for sharing the table clock with other proxies.
    pub fleet_redis_url: Option<String>,
    /// Key and channel prefix in Redis.
    pub fleet_prefix: String,
    /// With a fleet, hold a write's reply until its commit position is published (at
    /// most this long), so another proxy cannot serve a stale read of it.
    pub fleet_publish_wait_ms: u64,
    /// Read each committing write's position (one extra round trip on the server
    /// connection after the client has its reply). Off: every mode acts as eventual.
    pub capture_commits: bool,
    /// Least time between two reads of the primary's commit positions by a pool's
    /// sampler (transaction mode): under load, the commits in between share one read.
    pub capture_interval_ms: u64,
}

impl Default for ConsistencyConfig {
    fn default() -> Self {
        ConsistencyConfig {
            mode: ConsistencyMode::Strict,
            max_wait_ms: 50,
            wait_for_replica: WaitPolicy::Auto,
            max_lag_bytes: 64 * 1024 * 1024,
            max_lag_ms: 30_000,
            lag_interval_ms: 100,
            lag_source: LagSource::Postgres,
            nearest_tolerance: 4,
            fleet_redis_url: None,
            fleet_prefix: "pgwarden".into(),
            fleet_publish_wait_ms: 50,
            capture_commits: true,
            capture_interval_ms: 1,
        }
    }
}

/// Credentials the proxy's own monitors use; default: the first user's server
/// credentials, database `postgres`.
#[derive(Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    pub user: Option<String>,
    pub password: Option<String>,
    pub password_env: Option<String>,
    pub database: Option<String>,
}

impl std::fmt::Debug for MonitorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorConfig")
            .field("user", &self.user)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Replica,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub name: String,
    pub host: String,
    #[serde(default = "default_pg_port")]
    pub port: u16,
    pub role: Role,
    /// Share of reads for weighted_random balancing.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Aurora `server_id` of this instance (lag_source: aurora); defaults to `name`.
    #[serde(default)]
    pub aurora_id: Option<String>,
}

/// Whether a node's `host` names the directory of a server's Unix socket (a path, as
/// libpq reads `host=/var/run/postgresql`) rather than a network host.
pub fn is_socket_dir(host: &str) -> bool {
    host.starts_with('/')
}

fn default_weight() -> u32 {
    1
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:6432".parse().expect("valid literal")
}

fn default_pg_port() -> u16 {
    5432
}

/// Monitor credentials with secrets resolved.
#[derive(Clone)]
pub struct MonitorCredentials {
    pub user: String,
    pub password: String,
    pub database: String,
}

/// A user with its secrets resolved (environment variables read once at load).
#[derive(Clone)]
pub struct ResolvedUser {
    pub name: String,
    pub password: String,
    pub server_user: String,
    pub server_password: String,
}
