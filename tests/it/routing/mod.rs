//! Read/write split, checked from the server side: every statement reports the port of
//! the server that ran it (`inet_server_port()`), compared with the cluster's ports.
//! `split` is the split itself (DESIGN §3.2); `session_state` checks session state across
//! server connections with replicas in play, `lost_connections` servers and connections
//! lost under a request.

mod lost_connections;
mod session_state;
mod split;

use crate::common::{start_with, Env, Setup};
use pgwarden::config::Config;
use pgwarden::sandbox::PgCluster;
use std::collections::HashSet;
use std::time::Duration;

fn replica_ports(env: &Env) -> HashSet<i32> {
    env.cluster.replicas.iter().map(|r| r.port as i32).collect()
}

fn primary_port(env: &Env) -> i32 {
    env.cluster.primary.port as i32
}

/// Port of the server that ran `sql`, whose first column must be inet_server_port().
async fn port_of(c: &tokio_postgres::Client, sql: &str) -> i32 {
    let rows = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse().unwrap()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

async fn routing_env() -> Env {
    routing_env_with(Setup {
        replicas: 2,
        ..Default::default()
    })
    .await
}

async fn routing_env_with(setup: Setup) -> Env {
    routing_env_edited(setup, |_, _| {}).await
}

async fn routing_env_edited(setup: Setup, edit: impl FnOnce(&mut Config, &PgCluster)) -> Env {
    let env = start_with(setup, edit).await;
    let direct = env.direct().await;
    direct
        .batch_execute(
            "create table items (id int primary key, v text);
             insert into items select g, 'v' || g from generate_series(1, 10) g;
             create sequence seq;
             grant all on items, seq to app;",
        )
        .await
        .unwrap();
    let cluster = &env.cluster;
    tokio::task::block_in_place(|| cluster.wait_replicas_caught_up(Duration::from_secs(30)))
        .unwrap();
    env
}
