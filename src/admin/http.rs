//! A minimal HTTP/1.1 endpoint: /metrics (Prometheus text), /healthz, and
//! `POST /cache/flush[?table=NAME]` (the result cache). Requests are tiny and bounded;
//! anything else gets 404.

use crate::cache::Cache;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub async fn listen(
    listener: TcpListener,
    metrics: Option<PrometheusHandle>,
    cache: Option<Arc<Cache>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = shutdown.changed() => return,
        };
        if let Ok((tcp, _)) = conn {
            let (metrics, cache) = (metrics.clone(), cache.clone());
            tokio::spawn(async move {
                let answered = answer(tcp, metrics, cache);
                let _ = tokio::time::timeout(Duration::from_secs(5), answered).await;
            });
        }
    }
}

async fn answer(
    mut tcp: TcpStream,
    metrics: Option<PrometheusHandle>,
    cache: Option<Arc<Cache>>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    while n < buf.len() {
        let r = tcp.read(&mut buf[n..]).await?;
        if r == 0 {
            break;
        }
        n += r;
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let mut words = head.split_whitespace();
    let method = words.next().unwrap_or("");
    let target = words.next().unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (status, body) = match path {
        "/cache/flush" if method != "POST" => ("405 Method Not Allowed", "use POST\n".to_string()),
        "/cache/flush" => match &cache {
            None => (
                "409 Conflict",
                "the cache is off (cache.mode)\n".to_string(),
            ),
            Some(c) => {
                let table = query.split('&').find_map(|p| p.strip_prefix("table="));
                c.flush(table.filter(|t| !t.is_empty()));
                ("200 OK", format!("flushed {}\n", table.unwrap_or("all")))
            }
        },
        "/healthz" => ("200 OK", "ok\n".to_string()),
        "/metrics" => match &metrics {
            Some(h) => ("200 OK", h.render()),
            None => ("200 OK", String::new()),
        },
        _ => ("404 Not Found", "not found\n".to_string()),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(resp.as_bytes()).await?;
    tcp.shutdown().await
}
