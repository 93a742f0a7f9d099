//! `pool.multiplex_reads`: autocommit reads share one server connection per (replica,
//! session settings), several clients' at a time. Each client must still get exactly
//! its own reply, with its own settings, whatever happens to the lane's server; a slow
//! read must not hold up the others for long, and a cancel must still answer at once.

use crate::common::{self, fe, Env, Msg, Setup, Wire};
use pgwarden::config::{Config, MultiplexReads};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Every read a lane can take goes to one (the tests check what lanes do); nothing
/// counts as slow.
fn always(c: &mut Config) {
    c.pool.multiplex_reads = MultiplexReads::Always;
    c.pool.multiplex_slow_ms = 600_000;
}

async fn start() -> Env {
    start_with(always).await
}

async fn start_with(tweak: fn(&mut Config)) -> Env {
    let env = common::start(Setup {
        replicas: 1,
        tweak,
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
    common::wait_for_a_replica_lag_sample(&env).await;
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

/// `clients` clients at once, each reading `reads` rows of its own by id with simple
/// Queries and checking every value.
fn readers(env: &Env, clients: i32, reads: i32) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|c| {
            let port = env.port();
            tokio::spawn(async move {
                let mut w = Wire::connect(port, "app", "app", "app", &[]).await;
                for i in 0..reads {
                    let id = 1000 + c * 1000 + i;
                    let sql = format!("select v from items where id = {id}");
                    assert_eq!(value(&mut w, &sql).await, format!("v{id}"), "client {c}");
                }
            })
        })
        .collect()
}

/// Many clients read different rows at once: every reply is the client's own, and
/// (the same settings, one replica) they share one lane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_each_get_their_own_rows() {
    let env = start().await;
    for t in readers(&env, 16, 150) {
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
    common::add_a_column_to_items(&env).await;
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
    let tasks = readers(&env, 4, 400);
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

/// Extended-protocol reads take lanes too: statements the clients prepared (binary
/// results, as tokio-postgres asks for them) and unnamed Parse/Bind/Execute batches (as
/// pgbench -M extended sends them), each client getting its own rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_reads_take_lanes() {
    let env = start().await;
    let mut tasks = Vec::new();
    for c in 0..6i32 {
        let client = env.connect().await;
        tasks.push(tokio::spawn(async move {
            let stmt = client
                .prepare("select v, id from items where id = $1")
                .await
                .unwrap();
            for i in 0..100 {
                let id = 1000 + c * 1000 + i;
                let row = client.query_one(&stmt, &[&id]).await.unwrap();
                assert_eq!(row.get::<_, String>(0), format!("v{id}"), "client {c}");
                assert_eq!(row.get::<_, i32>(1), id);
            }
        }));
    }
    for c in 0..6 {
        let port = env.port();
        tasks.push(tokio::spawn(async move {
            let mut w = Wire::connect(port, "app", "app", "app", &[]).await;
            for i in 0..100 {
                let id = (10_000 + c * 1000 + i).to_string();
                let batch = [
                    fe::parse("", "select v from items where id = $1"),
                    fe::bind("", "", &[Some(id.as_bytes())]),
                    fe::execute("", 0),
                    fe::sync(),
                ]
                .concat();
                w.send(&batch).await;
                let r = w.until_ready().await;
                assert_eq!(common::describe_all(&r), "1 2 D C(SELECT 1) Z(I)");
                let row = r.iter().find_map(Msg::data_row).unwrap();
                assert_eq!(row[0].as_deref(), Some(format!("v{id}").as_bytes()));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let served = env.proxy.shared.lanes.served();
    assert!(
        served >= 12 * 100 * 9 / 10,
        "most extended reads went through a lane: {served}"
    );
}

/// Whether a read that sleeps (its SQL mentions pg_sleep) has been running on the
/// replica for at least `ms`.
fn sleeping_for(env: &Env, ms: u32) -> bool {
    let out = env.cluster.replicas[0]
        .psql(
            "postgres",
            "postgres",
            &format!(
                "select count(*) from pg_stat_activity where state = 'active' \
                 and query like '%pg_sleep%' and query not like '%pg_stat_activity%' \
                 and now() - query_start > interval '{ms} ms'"
            ),
        )
        .unwrap();
    out.trim() != "0"
}

/// Every read a lane can take goes to one; a read counts as slow after 300 ms.
fn slow_after_300_ms(c: &mut Config) {
    c.pool.multiplex_reads = MultiplexReads::Always;
    c.pool.multiplex_slow_ms = 300;
}

/// Waits until a pg_sleep read has been running for `ms` on a server.
async fn wait_sleeping(env: &Env, what: &str, ms: u32) {
    common::wait_for(what, Duration::from_secs(20), || {
        let running = tokio::task::block_in_place(|| sleeping_for(env, ms));
        async move { running.then_some(()) }
    })
    .await;
}

/// A read that runs long on a lane: reads queued behind it are handed back after
/// multiplex_slow_ms and served the usual way, later ones go there at once, and
/// afterwards its statement stays off the lanes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_read_holds_up_no_one_and_leaves_the_lanes() {
    let env = start_with(slow_after_300_ms).await;
    let slow = env.connect().await;
    let sql = "select pg_sleep($1), v from items where id = $2";
    let stmt = slow.prepare(sql).await.unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let finished = done.clone();
    let sleeper = tokio::spawn(async move {
        slow.query_one(&stmt, &[&3.0f64, &1i32]).await.unwrap();
        finished.store(true, Ordering::SeqCst);
        (slow, stmt)
    });
    wait_sleeping(&env, "the sleeping read running", 0).await;
    // Another client with the same settings, so the same lane.
    let fast = env.connect().await;
    let read = fast
        .prepare("select v from items where id = $1")
        .await
        .unwrap();
    for i in 0..20 {
        let row = fast.query_one(&read, &[&(100 + i)]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), format!("v{}", 100 + i));
    }
    assert!(
        !done.load(Ordering::SeqCst),
        "the fast reads waited for the slow one"
    );
    let (slow, stmt) = sleeper.await.unwrap();
    assert_eq!(env.proxy.shared.lanes.slow_statements(), 1);
    let before = env.proxy.shared.lanes.served();
    slow.query_one(&stmt, &[&0.0f64, &1i32]).await.unwrap();
    assert_eq!(
        env.proxy.shared.lanes.served(),
        before,
        "the slow statement went to a lane again"
    );
}

/// A cancel of a read waiting on a lane is answered at once with 57014 (the read has
/// nothing to undo), and the client goes on as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_on_a_lane_answers_at_once() {
    let env = start_with(slow_after_300_ms).await;
    let client = Arc::new(env.connect().await);
    let stmt = client
        .prepare("select pg_sleep($1), v from items where id = $2")
        .await
        .unwrap();
    let c = client.clone();
    let s = stmt.clone();
    let reading = tokio::spawn(async move { c.query_one(&s, &[&600.0f64, &1i32]).await });
    wait_sleeping(&env, "the read running on the replica", 100).await;
    client
        .cancel_token()
        .cancel_query(tokio_postgres::NoTls)
        .await
        .unwrap();
    let err = tokio::time::timeout(common::WIRE_TIMEOUT, reading)
        .await
        .expect("the cancelled read is answered")
        .unwrap()
        .expect_err("the read was cancelled");
    assert_eq!(common::sqlstate(&err).as_deref(), Some("57014"));
    // The lane still runs the sleeping read: the next one goes around it.
    let row = client
        .query_one("select v from items where id = $1", &[&7i32])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "v7");
}

/// By default (auto) a lane is only taken while the replica is busy with another
/// query: a client alone never takes one, clients reading together do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_only_overlapping_reads_take_lanes() {
    let env = start_with(|c| c.pool.multiplex_reads = MultiplexReads::Auto).await;
    let mut w = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    for i in 0..50 {
        assert_eq!(
            value(&mut w, &format!("select v from items where id = {}", 1 + i)).await,
            format!("v{}", 1 + i)
        );
    }
    assert_eq!(
        env.proxy.shared.lanes.served(),
        0,
        "a lone client took a lane"
    );
    for t in readers(&env, 8, 200) {
        t.await.unwrap();
    }
    assert!(
        env.proxy.shared.lanes.served() > 0,
        "overlapping reads took no lane"
    );
}

/// An unnamed statement runs on a lane as a statement the lane's connection keeps; the
/// client cannot tell: after a table change it gets the new columns, not the error the
/// kept statement meets, and its own errors come as PostgreSQL sends them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_statements_on_a_lane_behave_as_sent() {
    let env = start().await;
    let mut w = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    let batch = |sql: &str| {
        [
            fe::parse("", sql),
            fe::bind("", "", &[Some(&b"12345"[..])]),
            fe::execute("", 0),
            fe::sync(),
        ]
        .concat()
    };
    let sql = "select * from items where id = $1";
    common::unnamed_read_across_a_table_change(&env, &mut w, &batch(sql)).await;
    w.send(&batch("selec $1")).await;
    let r = w.until_ready().await;
    assert_eq!(
        common::describe_all(&r),
        "E(42601: syntax error at or near \"selec\") Z(I)"
    );
    // A read of a table that does not exist: the lane's Parse fails, then the client's.
    for _ in 0..2 {
        w.send(&batch("select * from no_such_items where id = $1"))
            .await;
        let r = w.until_ready().await;
        assert_eq!(
            common::describe_all(&r),
            "E(42P01: relation \"no_such_items\" does not exist) Z(I)"
        );
    }
    assert!(env.proxy.shared.lanes.served() >= 5, "the lane served them");
}

/// A read whose reply is large is not held by a lane: it runs the usual way (which
/// streams it) and its statement stays off the lanes; the client gets every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_reply_is_streamed_the_usual_way() {
    let env = start().await;
    let client = env.connect().await;
    let stmt = client
        .prepare("select id, repeat(v, $1) from items where id <= $2 order by id")
        .await
        .unwrap();
    for _ in 0..2 {
        let rows = client.query(&stmt, &[&200i32, &2000i32]).await.unwrap();
        assert_eq!(rows.len(), 2000);
        assert_eq!(rows[1999].get::<_, i32>(0), 2000);
        assert_eq!(rows[1999].get::<_, String>(1), "v2000".repeat(200));
    }
    assert_eq!(env.proxy.shared.lanes.slow_statements(), 1);
    assert_eq!(env.proxy.shared.lanes.served(), 0);
}
