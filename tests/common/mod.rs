//! Shared test scaffolding: a real PostgreSQL cluster plus a pgwarden proxy in front of
//! it, on ports of their own, torn down when the test ends (also on panic).
#![allow(dead_code)]

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
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            replicas: 0,
            pool_mode: "transaction",
            extra_yaml: String::new(),
            tweak: |_| {},
        }
    }
}

pub async fn start(setup: Setup) -> Env {
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
    (setup.tweak)(&mut cfg);
    let proxy = Proxy::start(cfg, None).await.expect("proxy starts");
    Env { proxy, cluster }
}

impl Env {
    pub fn port(&self) -> u16 {
        self.proxy.addr.port()
    }

    /// libpq-style connection string through the proxy.
    pub fn dsn(&self, user: &str, password: &str, db: &str) -> String {
        format!("postgres://{user}:{password}@127.0.0.1:{}/{db}?sslmode=disable", self.port())
    }

    pub async fn connect(&self) -> tokio_postgres::Client {
        self.connect_as("app", "app", "app").await.expect("connect through proxy")
    }

    pub async fn connect_as(&self, user: &str, password: &str, db: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::connect(&self.dsn(user, password, db), tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Direct connection to the primary, bypassing the proxy.
    pub async fn direct(&self) -> tokio_postgres::Client {
        let dsn = self.cluster.primary.dsn("postgres", "", "app");
        let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await.expect("direct connect");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }
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
