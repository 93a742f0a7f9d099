//! No stale reads (DESIGN §3.3), checked against real lag: a replica whose replay is
//! paused with pg_wal_replay_pause() must never serve a read of data a client has seen
//! committed, while reads that do not need that data keep going to replicas.

mod cancel;
mod catalog;
mod lag;
mod reach;
mod read_your_writes;

use crate::common::{start, Env, Setup};
use pgwarden::config::Config;
use std::collections::HashSet;
use std::time::Duration;

/// Generous bound for what must happen soon (not a speed claim).
const DEADLINE: Duration = Duration::from_secs(30);

async fn port_of(c: &tokio_postgres::Client, sql: &str) -> i32 {
    c.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

async fn consistency_env(extra_yaml: &str) -> Env {
    consistency_env_tweaked(extra_yaml, |_| {}).await
}

async fn consistency_env_tweaked(extra_yaml: &str, tweak: fn(&mut Config)) -> Env {
    let env = start(Setup {
        replicas: 2,
        extra_yaml: extra_yaml.to_string(),
        tweak,
        ..Default::default()
    })
    .await;
    env.direct()
        .await
        .batch_execute(
            "create table kv (k int primary key, v int);
             create table other (k int primary key, v int);
             insert into other select g, g from generate_series(1, 100) g;
             grant all on kv, other to app;",
        )
        .await
        .unwrap();
    let cluster = &env.cluster;
    tokio::task::block_in_place(|| cluster.wait_replicas_caught_up(Duration::from_secs(30)))
        .unwrap();
    env
}

/// The value of key k in kv, and whether a replica served it.
async fn read_kv(
    c: &tokio_postgres::Client,
    k: i32,
    replica_ports: &HashSet<i32>,
) -> (Option<i32>, bool) {
    let row = c
        .query_one(
            "select (select v from kv where k = $1), inet_server_port()",
            &[&k],
        )
        .await
        .unwrap();
    (row.get(0), replica_ports.contains(&row.get::<_, i32>(1)))
}

fn pause_replay(env: &Env, replica: usize) {
    env.cluster.replicas[replica]
        .psql("postgres", "app", "select pg_wal_replay_pause()")
        .unwrap();
}

fn resume_replay(env: &Env, replica: usize) {
    env.cluster.replicas[replica]
        .psql("postgres", "app", "select pg_wal_replay_resume()")
        .unwrap();
}

fn pause_all(env: &Env) {
    tokio::task::block_in_place(|| {
        (0..env.cluster.replicas.len()).for_each(|i| pause_replay(env, i))
    });
}

fn resume_all(env: &Env) {
    tokio::task::block_in_place(|| {
        (0..env.cluster.replicas.len()).for_each(|i| resume_replay(env, i))
    });
}
