//! The result cache (DESIGN §3.4) against real servers: what a hit returns, what moves an
//! entry out, who sees whose rows, and reads racing writes.

mod concurrency;
mod hits;
mod invalidation;
mod isolation;
mod late_message;

use crate::common::{start, wait_for, Env, Msg, Setup, Wire};
use pgwarden::cache::{Cache, Stats};
use pgwarden::config::Config;
use pgwarden::consistency::bus::FleetBus;
use pgwarden::sandbox::redis::RedisServer;
use pgwarden::Proxy;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A proxy in transaction mode with the cache on for every safe read, over `replicas`
/// streaming replicas, with `extra` YAML appended; a table `kv (k int, v text)` of rows
/// 1..=3 is created on the primary and granted to both test roles.
pub async fn cached_env(replicas: usize, extra: &str) -> Env {
    let env = start(Setup {
        replicas,
        extra_yaml: format!("cache:\n  mode: all-safe\n  default_ttl_ms: 600000\n{extra}"),
        tweak: |c| c.admin_listen = Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    })
    .await;
    env.direct()
        .await
        .batch_execute(
            "create table kv (k int primary key, v text);
             insert into kv select g, 'v' || g from generate_series(1, 3) g;
             grant all on kv to app, md5user;
             alter table kv owner to app",
        )
        .await
        .unwrap();
    caught_up(&env).await;
    env
}

/// Waits until every replica has replayed what the primary has now: tables created
/// directly (bypassing the proxy) are otherwise unknown to its table clock.
pub async fn caught_up(env: &Env) {
    let primary = &env.cluster.primary;
    let lsn = primary
        .psql("postgres", "app", "select pg_current_wal_lsn()")
        .unwrap();
    let sql = format!(
        "select pg_last_wal_replay_lsn() >= '{}'::pg_lsn",
        lsn.trim()
    );
    for r in &env.cluster.replicas {
        crate::common::wait_for(
            "a replica to replay the setup",
            Duration::from_secs(10),
            || async { (r.psql("postgres", "app", &sql).ok()?.trim() == "t").then_some(()) },
        )
        .await;
    }
}

pub fn stats(env: &Env) -> Stats {
    env.proxy.shared.cache.as_ref().expect("cache on").stats()
}

/// Another proxy with the same config (so the same fleet bus, if any) on a port of its own.
pub async fn second_proxy(env: &Env) -> Proxy {
    let mut cfg = Config::clone(&env.proxy.shared.config());
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.admin_listen = None;
    Proxy::start(cfg, None).await.expect("second proxy starts")
}

/// A POST to the admin port; the response's status line and body.
pub async fn post(env: &Env, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = env.proxy.admin_addr.expect("admin port");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    out
}

/// The messages as bytes, exactly as they came off the wire.
pub fn wire_bytes(msgs: &[Msg]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        out.push(m.tag);
        out.extend_from_slice(&((m.body.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(&m.body);
    }
    out
}

/// Runs `sql` until the cache keeps its reply (or answers it) (the first runs may find the catalog not
/// read yet), and returns that reply.
pub async fn fill(env: &Env, w: &mut Wire, sql: &str) -> Vec<Msg> {
    fill_in(env.proxy.shared.cache.as_ref().expect("cache on"), w, sql).await
}

/// `fill`, through whichever proxy `cache` belongs to.
pub async fn fill_in(cache: &Cache, w: &mut Wire, sql: &str) -> Vec<Msg> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = cache.stats();
        let reply = w.simple(sql).await;
        let after = cache.stats();
        if after.fills > before.fills || after.hits > before.hits {
            return reply;
        }
        assert!(
            Instant::now() < deadline,
            "the cache never kept {sql}: {:?}",
            cache.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first column of a reply's first row, as text.
pub fn first_text(reply: &[Msg]) -> String {
    let row = reply.iter().find_map(|m| m.data_row()).expect("a row");
    String::from_utf8(row[0].clone().expect("not NULL")).unwrap()
}

/// Runs `sql` once and says whether the cache answered it.
pub async fn hit(env: &Env, w: &mut Wire, sql: &str) -> (bool, Vec<Msg>) {
    let before = stats(env).hits;
    let reply = w.simple(sql).await;
    (stats(env).hits > before, reply)
}

/// Two proxies of one fleet (a redis-server of their own) over `replicas` replicas, both
/// on the bus: the first's Env, the second proxy, both buses, and the redis-server.
pub async fn fleet_of_two(replicas: usize) -> (Env, Proxy, [Arc<FleetBus>; 2], RedisServer) {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap()
        .unwrap();
    let fleet = format!("consistency:\n  fleet_redis_url: {}\n", redis.url());
    let a = cached_env(replicas, &fleet).await;
    let b = second_proxy(&a).await;
    let buses = [
        a.proxy.shared.bus.clone().unwrap(),
        b.shared.bus.clone().unwrap(),
    ];
    wait_for(
        "both proxies on the bus",
        Duration::from_secs(10),
        || async { buses.iter().all(|b| b.is_connected()).then_some(()) },
    )
    .await;
    (a, b, buses, redis)
}
