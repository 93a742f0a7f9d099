//! /metrics and /healthz on the admin port, with real counters after real traffic.
//! One test per binary: the metrics recorder is process-wide.

#[path = "it/common/mod.rs"]
#[allow(dead_code, unused_imports)] // this binary uses few of the shared helpers
mod common;

use common::{start, Setup};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_healthz() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).expect("first recorder in this binary");
    let cluster_env = start(Setup::default()).await;
    // A second proxy on the same cluster, with the admin port and the handle.
    let mut cfg = cluster_env.proxy.shared.config.clone();
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    let proxy = pgwarden::Proxy::start(cfg, Some(handle)).await.unwrap();
    let admin = proxy.admin_addr.unwrap();

    let health = get(admin, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let missing = get(admin, "/nope").await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");

    let dsn = format!("postgres://app:app@{}/app", proxy.addr);
    let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    for _ in 0..5 {
        client.simple_query("select 1").await.unwrap();
    }
    let _ = tokio_postgres::connect(
        &format!("postgres://app:bad@{}/app", proxy.addr),
        tokio_postgres::NoTls,
    )
    .await;
    let body = get(admin, "/metrics").await;
    // The sum over a metric's label sets (counters are registered up front, at 0).
    let value = |name: &str| -> f64 {
        let samples: Vec<f64> = body
            .lines()
            .filter(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        assert!(!samples.is_empty(), "{name} missing from:\n{body}");
        samples.iter().sum()
    };
    assert!(value("pgwarden_queries_total") >= 5.0);
    assert!(
        body.contains("pgwarden_queries_total{route=\"primary\",reason=\"utility\"}")
            || body.contains("pgwarden_queries_total{reason=\"utility\",route=\"primary\"}"),
        "every route and reason is exported from the start:\n{body}"
    );
    assert_eq!(value("pgwarden_client_connections"), 1.0);
    assert!(value("pgwarden_server_connections") >= 1.0);
    assert!(value("pgwarden_auth_failures_total") >= 1.0);
}
