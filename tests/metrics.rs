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
    let mut cfg = pgwarden::config::Config::clone(&cluster_env.proxy.shared.config());
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

/// docs/metrics.md lists exactly the metrics the code emits: every `pgwarden_*` name given
/// to a `counter!`, `gauge!` or `histogram!` call under src/ (as a literal, or as a `const`
/// of the same file), against the backticked names in the first column of its tables.
#[test]
fn docs_list_every_emitted_metric() {
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rs_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// The string literal at the start of `s`, if it starts with one.
    fn literal(s: &str) -> Option<&str> {
        let rest = s.strip_prefix('"')?;
        rest.find('"').map(|end| &rest[..end])
    }

    /// The value of `const NAME: &str = "...";` in `text`.
    fn const_value<'a>(text: &'a str, name: &str) -> Option<&'a str> {
        text.lines().find_map(|l| {
            let l = l.trim_start();
            let rest = ["pub(crate) ", "pub(super) ", "pub "]
                .iter()
                .find_map(|v| l.strip_prefix(v))
                .unwrap_or(l);
            let rest = rest.strip_prefix("const ")?.strip_prefix(name)?;
            let rest = rest.trim_start().strip_prefix(':')?.trim_start();
            let rest = rest.strip_prefix("&str")?.trim_start().strip_prefix('=')?;
            literal(rest.trim_start())
        })
    }

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rs_files(&root.join("src"), &mut files);
    let mut emitted = BTreeSet::new();
    let mut unreadable = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for mac in ["counter!(", "gauge!(", "histogram!("] {
            for (at, _) in text.match_indices(mac) {
                let arg = text[at + mac.len()..].trim_start();
                let name = literal(arg).or_else(|| {
                    let ident: String = arg
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                        .collect();
                    const_value(&text, ident.rsplit("::").next().unwrap_or(""))
                });
                match name {
                    Some(n) if n.starts_with("pgwarden_") => {
                        emitted.insert(n.to_string());
                    }
                    _ => {
                        let line = text[..at].lines().count();
                        unreadable.push(format!("{}:{line}", file.display()));
                    }
                }
            }
        }
    }
    assert!(
        unreadable.is_empty(),
        "metric calls whose name is neither a \"pgwarden_...\" literal nor a const of the \
         same file (this scan cannot check them against docs/metrics.md): {unreadable:?}"
    );
    assert!(
        emitted.len() > 10,
        "the scan found only {emitted:?} under src/"
    );

    let doc = std::fs::read_to_string(root.join("docs/metrics.md")).unwrap();
    let listed: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.trim().strip_prefix('|')?.split('|').next())
        .filter_map(|cell| {
            let name = cell.trim().strip_prefix("`pgwarden_")?;
            let end = name.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
            Some(format!("pgwarden_{}", &name[..end]))
        })
        .collect();
    let missing: Vec<_> = emitted.difference(&listed).collect();
    let extra: Vec<_> = listed.difference(&emitted).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/metrics.md is out of date: emitted under src/ but not listed: {missing:?}; \
         listed but emitted nowhere: {extra:?}"
    );
}
