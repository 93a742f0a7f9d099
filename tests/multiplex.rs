//! `pool.multiplex_reads`: autocommit reads share one server connection per (replica,
//! session settings), several clients' at a time. Each client must still get exactly
//! its own reply, with its own settings, whatever happens to the lane's server.

mod common;

use common::{Env, Msg, Setup, Wire};
use std::time::Duration;

async fn start() -> Env {
    let env = common::start(Setup {
        replicas: 1,
        tweak: |c| c.pool.multiplex_reads = true,
        ..Default::default()
    })
    .await;
    env.direct()
        .await
        .batch_execute(
            "create table items (id int primary key, v text, ts timestamptz);
             insert into items select g, 'v' || g, '2026-01-01 00:00:00+00'
               from generate_series(1, 20000) g;
             grant all on items to app;",
        )
        .await
        .unwrap();
    let cluster = &env.cluster;
    tokio::task::block_in_place(|| cluster.wait_replicas_caught_up(Duration::from_secs(30)))
        .unwrap();
    // Lanes take only replicas whose lag is known: wait for the monitor's first sample.
    let topology = env.proxy.shared.topology.clone();
    common::wait_for(
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
    env
}

/// The first column of the one row `sql` returns.
async fn value(w: &mut Wire, sql: &str) -> String {
    let r = w.simple(sql).await;
    let row = r
        .iter()
        .find_map(Msg::data_row)
        .unwrap_or_else(|| panic!("{sql}: {}", common::describe_all(&r)));
    String::from_utf8(row[0].clone().unwrap()).unwrap()
}

/// Many clients read different rows at once: every reply is the client's own, and
/// (the same settings, one replica) they share one lane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_each_get_their_own_rows() {
    let env = start().await;
    let mut tasks = Vec::new();
    for c in 0..16 {
        let port = env.port();
        tasks.push(tokio::spawn(async move {
            let mut w = Wire::connect(port, "app", "app", "app", &[]).await;
            for i in 0..150 {
                let id = 1000 + c * 1000 + i;
                let got = value(&mut w, &format!("select v from items where id = {id}")).await;
                assert_eq!(got, format!("v{id}"), "client {c}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let lanes = &env.proxy.shared.lanes;
    assert_eq!(
        lanes.len(),
        1,
        "16 clients with the same settings share one lane"
    );
    assert!(
        lanes.served() >= 16 * 150 * 9 / 10,
        "most reads went through the lane: {}",
        lanes.served()
    );
}

/// Clients with other settings get lanes of their own: each sees its own TimeZone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_keeps_its_own_settings() {
    let env = start().await;
    let mut tasks = Vec::new();
    for (zone, want) in [
        ("UTC", "2026-01-01 00:00:00+00"),
        ("Asia/Tokyo", "2026-01-01 09:00:00+09"),
    ] {
        for _ in 0..4 {
            let port = env.port();
            tasks.push(tokio::spawn(async move {
                let mut w = Wire::connect(port, "app", "app", "app", &[]).await;
                w.simple(&format!("set timezone = '{zone}'")).await;
                for i in 0..100 {
                    let sql = format!("select ts from items where id = {}", 1000 + i);
                    assert_eq!(value(&mut w, &sql).await, want, "{zone}");
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(env.proxy.shared.lanes.len(), 2, "one lane per TimeZone");
}

/// A table change makes the lane's prepared statement unusable: the client's Query is
/// then served the usual way and shows the new column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_table_is_invisible_through_a_lane() {
    let env = start().await;
    let mut w = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    let sql = "select * from items where id = 12345";
    for _ in 0..3 {
        common::one_row(&mut w, sql).await;
    }
    env.direct()
        .await
        .batch_execute("alter table items add column extra int default 7")
        .await
        .unwrap();
    let cluster = &env.cluster;
    tokio::task::block_in_place(|| cluster.wait_replicas_caught_up(Duration::from_secs(30)))
        .unwrap();
    for _ in 0..3 {
        let row = common::one_row(&mut w, sql).await;
        assert_eq!(row.len(), 4, "the new column is there");
    }
    assert!(
        env.proxy.shared.lanes.served() >= 4,
        "the lane served around the change"
    );
}

/// The lane's server connection is killed while clients read: no client sees an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_whose_server_dies_costs_readers_nothing() {
    let env = start().await;
    let mut tasks = Vec::new();
    for c in 0..4 {
        let port = env.port();
        tasks.push(tokio::spawn(async move {
            let mut w = Wire::connect(port, "app", "app", "app", &[]).await;
            for i in 0..400 {
                let id = 1000 + c * 1000 + i;
                let got = value(&mut w, &format!("select v from items where id = {id}")).await;
                assert_eq!(got, format!("v{id}"));
            }
        }));
    }
    let replica = &env.cluster.replicas[0];
    let lanes = env.proxy.shared.lanes.clone();
    common::wait_for("reads on a lane", Duration::from_secs(10), || {
        let served = lanes.served();
        async move { (served > 0).then_some(()) }
    })
    .await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        tokio::task::block_in_place(|| {
            replica.psql(
                "postgres",
                "app",
                "select pg_terminate_backend(pid) from pg_stat_activity \
                 where usename = 'app' and application_name <> 'pgwarden-monitor'",
            )
        })
        .unwrap();
    }
    for t in tasks {
        t.await.unwrap();
    }
}
