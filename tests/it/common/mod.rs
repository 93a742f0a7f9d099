//! Shared test scaffolding: a real PostgreSQL cluster plus a pgwarden proxy in front of
//! it, on ports of their own, torn down when the test ends (also on panic).

pub mod cutter;
mod wire;

pub use wire::{describe_all, fe, one_row, Msg, Wire, WIRE_TIMEOUT};

use pgwarden::config::{self, Config};
use pgwarden::sandbox::{free_port, proxy_config_yaml, ClusterOptions, PgCluster};
use pgwarden::Proxy;
use std::future::Future;
use std::time::{Duration, Instant};

pub struct Env {
    pub proxy: Proxy,
    // Dropped after the proxy: fields drop in declaration order.
    pub cluster: PgCluster,
}

pub struct Setup {
    pub replicas: usize,
    pub pool_mode: &'static str,
    /// Extra YAML lines appended to the generated proxy config.
    pub extra_yaml: String,
    /// Called on the parsed config before the proxy starts.
    pub tweak: fn(&mut Config),
    /// The proxy reaches every server through its Unix socket instead of TCP.
    pub unix_sockets: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            replicas: 0,
            pool_mode: "transaction",
            extra_yaml: String::new(),
            tweak: |_| {},
            unix_sockets: false,
        }
    }
}

/// Proxy logs in test output when PGWARDEN_LOG is set (e.g. PGWARDEN_LOG=debug).
pub fn init_logs() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("PGWARDEN_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}

pub async fn start(setup: Setup) -> Env {
    start_with(setup, |_, _| {}).await
}

/// `start`, with `edit` given the config (after `Setup::tweak`) and the cluster, e.g. to
/// put a node behind a `Cutter`.
pub async fn start_with(setup: Setup, edit: impl FnOnce(&mut Config, &PgCluster)) -> Env {
    init_logs();
    let replicas = setup.replicas;
    let cluster = tokio::task::spawn_blocking(move || {
        PgCluster::start(ClusterOptions {
            replicas,
            ..Default::default()
        })
    })
    .await
    .expect("cluster task")
    .expect("cluster starts");
    let yaml = proxy_config_yaml(&cluster, free_port(), None, setup.pool_mode) + &setup.extra_yaml;
    let mut cfg = config::load_str(&yaml).expect("test config is valid");
    if setup.unix_sockets {
        for node in &mut cfg.nodes {
            node.host = cluster.dir().display().to_string();
        }
    }
    (setup.tweak)(&mut cfg);
    edit(&mut cfg, &cluster);
    let proxy = Proxy::start(cfg, None).await.expect("proxy starts");
    Env { proxy, cluster }
}

impl Env {
    pub fn port(&self) -> u16 {
        self.proxy.addr.port()
    }

    /// libpq-style connection string through the proxy.
    pub fn dsn(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "postgres://{user}:{password}@127.0.0.1:{}/{db}?sslmode=disable",
            self.port()
        )
    }

    pub async fn connect(&self) -> tokio_postgres::Client {
        self.connect_as("app", "app", "app")
            .await
            .expect("connect through proxy")
    }

    pub async fn connect_as(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) =
            tokio_postgres::connect(&self.dsn(user, password, db), tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Direct connection to the primary, bypassing the proxy.
    pub async fn direct(&self) -> tokio_postgres::Client {
        let dsn = self.cluster.primary.dsn("postgres", "", "app");
        let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
            .await
            .expect("direct connect");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }
}

/// Waits for the monitor's first lag sample of a replica: lanes take only replicas whose
/// lag is known.
pub async fn wait_for_a_replica_lag_sample(env: &Env) {
    let topology = env.proxy.shared.topology.clone();
    wait_for(
        "a lag sample of the replica",
        Duration::from_secs(10),
        || {
            let known =
                topology.load().nodes.iter().any(|n| {
                    n.role == pgwarden::config::Role::Replica && n.runtime.lag().is_some()
                });
            async move { known.then_some(()) }
        },
    )
    .await;
}

/// Polls `check` until it returns Some or the deadline passes.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The SQLSTATE of a tokio-postgres error, if the server (or proxy) sent one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.as_db_error().map(|d| d.code().code().to_string())
}

/// Runs a command-line client and returns (success, stdout, stderr).
pub fn run_cmd(cmd: &mut std::process::Command) -> (bool, String, String) {
    let out = cmd.output().expect("command runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// psql from the PostgreSQL 15 install (or PATH), with no user config.
pub fn psql(dsn: &str) -> std::process::Command {
    let bin = ["/usr/lib/postgresql/15/bin/psql"]
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(|s| s.to_string())
        .unwrap_or_else(|| "psql".into());
    let mut c = std::process::Command::new(bin);
    c.arg("-X").arg("-v").arg("ON_ERROR_STOP=1").arg(dsn);
    c.env_remove("PGPASSWORD").env("PGCONNECT_TIMEOUT", "10");
    c
}

// ---------------------------------------------------------------------------------------
// Helpers first written for the protocol tests (the wire client is in wire.rs)
// ---------------------------------------------------------------------------------------

/// A tokio-postgres connection whose `Connection` stays reachable: it is driven with
/// `poll_message` by a task, asynchronous messages (notifications, notices) go to `rx`,
/// and `parameter()` reads the ParameterStatus values the client has been sent.
pub struct Watched {
    pub client: tokio_postgres::Client,
    pub conn: std::sync::Arc<
        std::sync::Mutex<
            tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
        >,
    >,
    pub rx: tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::AsyncMessage>,
}

impl Watched {
    pub async fn connect(dsn: &str) -> Watched {
        let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect {dsn}: {e}"));
        let conn = std::sync::Arc::new(std::sync::Mutex::new(conn));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let driven = conn.clone();
        tokio::spawn(async move {
            loop {
                // The lock is held only inside one poll, never across an await.
                let msg = std::future::poll_fn(|cx| {
                    driven.lock().expect("connection lock").poll_message(cx)
                })
                .await;
                match msg {
                    Some(Ok(m)) => {
                        let _ = tx.send(m);
                    }
                    _ => break,
                }
            }
        });
        Watched { client, conn, rx }
    }

    /// The last ParameterStatus value the server (or proxy) reported for `name`.
    pub fn parameter(&self, name: &str) -> Option<String> {
        self.conn
            .lock()
            .expect("connection lock")
            .parameter(name)
            .map(str::to_string)
    }
}

/// Adds column `extra` (default 7) to the tests' `items` table and waits until the
/// replicas have it: statements kept for `items` now return another row type.
pub async fn add_a_column_to_items(env: &Env) {
    env.direct()
        .await
        .batch_execute("alter table items add column extra int default 7")
        .await
        .unwrap();
    let cluster = &env.cluster;
    tokio::task::block_in_place(|| cluster.wait_replicas_caught_up(Duration::from_secs(30)))
        .unwrap();
}

/// Sends `req`, a read of the row of `items` with id 12345 on the unnamed statement,
/// six times, adding a column to `items` (and waiting for the replicas) before the
/// fourth: every reply must be whole, with the new column from then on, although a
/// statement the proxy kept for it now fails ("cached plan must not change result
/// type").
pub async fn unnamed_read_across_a_table_change(env: &Env, w: &mut Wire, req: &[u8]) {
    let mut columns = Vec::new();
    for step in 0..6 {
        if step == 3 {
            add_a_column_to_items(env).await;
        }
        w.send(req).await;
        let r = w.until_ready().await;
        assert_eq!(describe_all(&r), "1 2 D C(SELECT 1) Z(I)", "step {step}");
        columns.push(r.iter().find_map(Msg::data_row).unwrap().len());
    }
    assert_eq!(columns, [3, 3, 3, 4, 4, 4]);
}

/// Runs a command-line client off the async runtime.
pub async fn run_cmd_async(mut cmd: std::process::Command) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || run_cmd(&mut cmd))
        .await
        .expect("command task")
}
