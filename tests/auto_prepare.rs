//! `pool.auto_prepare`: simple-protocol statements with liftable integer literals run as
//! server-side prepared statements, and the client cannot tell. Replies are compared
//! byte for byte with the same queries sent to PostgreSQL directly.

mod common;

use common::{Env, Msg, Setup, Wire};
use std::time::Duration;

async fn start(auto_prepare: bool) -> Env {
    let tweak: fn(&mut pgwarden::config::Config) = if auto_prepare {
        |c| c.pool.size = 1
    } else {
        |c| {
            c.pool.size = 1;
            c.pool.auto_prepare = false;
        }
    };
    let env = common::start(Setup {
        tweak,
        ..Default::default()
    })
    .await;
    env.direct()
        .await
        .batch_execute(
            "create table items (id int primary key, k int, v text);
             insert into items select g, g % 10, 'v' || g from generate_series(1, 20000) g;
             grant all on items to app;",
        )
        .await
        .unwrap();
    env
}

/// The server statements on the proxy's one server connection (pool.size = 1).
async fn server_statements(env: &Env) -> Vec<String> {
    let c = env.connect().await;
    c.simple_query("select statement from pg_prepared_statements order by 1")
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect()
}

/// Every message, tag and body, of the replies to a simple Query.
async fn replies(w: &mut Wire, sql: &str) -> Vec<(char, Vec<u8>)> {
    w.simple(sql)
        .await
        .into_iter()
        .map(|m: Msg| (m.tag as char, m.body))
        .collect()
}

const QUERIES: &[&str] = &[
    "select * from items where id = 12345",
    "select id, v from items where id >= 19990 order by id limit 20",
    "select * from items where id = 99999",
    "select count(*) from items where k = 3 and id < 10000",
    "select * from items where id = 4000000000",
    // Errors keep their position: the lifted literal's text keeps its length.
    "select nosuch from items where id = 12345",
    "select * from items where v = 12345",
    "select 1/(id - 12345) from items where id = 12345",
    // Writes: no RowDescription unless RETURNING, the same command tags.
    "update items set k = k + 1000 where id = 12345",
    "update items set k = k - 1000 where id = 12345 returning id",
    "delete from items where id = 99999",
    "update items set v = 1234 where id = 12345",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_are_those_of_the_simple_protocol() {
    let env = start(true).await;
    let mut direct = Wire::connect(env.cluster.primary.port, "app", "app", "app", &[]).await;
    let mut proxied = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    // Twice: the second run uses the statements the first one prepared.
    for round in 0..2 {
        for sql in QUERIES {
            let want = replies(&mut direct, sql).await;
            let got = replies(&mut proxied, sql).await;
            assert_eq!(got, want, "round {round}: {sql}");
        }
    }
    let stmts = server_statements(&env).await;
    assert!(
        stmts
            .iter()
            .any(|s| s == "select * from items where id = $1   "),
        "the key lookup ran as a prepared statement: {stmts:?}"
    );
    assert!(
        !stmts.iter().any(|s| s.contains("nosuch")),
        "a statement that failed to prepare is not kept: {stmts:?}"
    );
}

/// After DDL changes a prepared SELECT's columns, PostgreSQL refuses to run it ("cached
/// plan must not change result type"); the client, who sent a plain Query, must instead
/// get the new columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_table_behind_a_prepared_select_is_invisible() {
    let env = start(true).await;
    let mut w = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    let sql = "select * from items where id = 12345";
    for _ in 0..2 {
        common::one_row(&mut w, sql).await;
    }
    env.direct()
        .await
        .batch_execute("alter table items add column extra int default 7")
        .await
        .unwrap();
    for _ in 0..2 {
        let row = common::one_row(&mut w, sql).await;
        assert_eq!(row.len(), 4, "the new column is there");
        assert_eq!(row[3].as_deref(), Some(&b"7"[..]));
    }
}

/// Two Queries in one write, then DDL, then two more: replies come in order, each
/// Query gets its own, and the connection carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_queries_keep_their_order() {
    let env = start(true).await;
    let mut w = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    let a = "select id from items where id = 12345";
    let b = "select id from items where id = 54321";
    let mut two = common::fe::query(a);
    two.extend(common::fe::query(b));
    for ddl in [None, Some("alter table items add column extra int")] {
        if let Some(ddl) = ddl {
            env.direct().await.batch_execute(ddl).await.unwrap();
        }
        w.send(&two).await;
        let first = w.until_ready().await;
        let second = w.until_ready().await;
        // a may meet the changed table while b is already on its way: it then gets
        // PostgreSQL's own error rather than a reply out of order.
        let d = common::describe_all(&first);
        assert!(
            d == "T D C(SELECT 1) Z(I)" || (ddl.is_some() && d.starts_with("E(0A000")),
            "{d}"
        );
        assert_eq!(common::describe_all(&second), "T C(SELECT 0) Z(I)");
        let again = w.simple(a).await;
        assert_eq!(common::describe_all(&again), "T D C(SELECT 1) Z(I)");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switched_off_queries_go_as_sent() {
    let env = start(false).await;
    let mut w = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    let r = w.simple("select * from items where id = 12345").await;
    assert_eq!(common::describe_all(&r), "T D C(SELECT 1) Z(I)");
    assert_eq!(server_statements(&env).await, Vec::<String>::new());
}

/// A write run as a prepared statement still moves the session's position: with the
/// replica's replay paused, every read of the row just written must see the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_write_is_read_back_with_a_paused_replica() {
    let env = common::start(Setup {
        replicas: 1,
        tweak: |c| c.pool.size = 1,
        ..Default::default()
    })
    .await;
    env.direct()
        .await
        .batch_execute(
            "create table counters (id int primary key, n int);
             insert into counters select g, 0 from generate_series(1, 20000) g;
             grant all on counters to app;",
        )
        .await
        .unwrap();
    let cluster = &env.cluster;
    tokio::task::block_in_place(|| {
        cluster.wait_replicas_caught_up(Duration::from_secs(30))?;
        cluster.replicas[0].psql("postgres", "app", "select pg_wal_replay_pause()")
    })
    .unwrap();
    let mut w = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    for i in 1..=20 {
        let r = w
            .simple("update counters set n = n + 1000 where id = 12345")
            .await;
        assert_eq!(common::describe_all(&r), "C(UPDATE 1) Z(I)");
        let r = w.simple("select n from counters where id = 12345").await;
        let row = r.iter().find_map(Msg::data_row).unwrap();
        assert_eq!(
            row[0].as_deref(),
            Some(format!("{}", i * 1000).as_bytes()),
            "read {i}"
        );
    }
    let r = w
        .simple("/* pgwarden:primary */ select statement from pg_prepared_statements")
        .await;
    let stmts: Vec<_> = r.iter().filter_map(Msg::data_row).collect();
    assert!(
        stmts.iter().any(|row| row[0].as_deref()
            == Some(&b"update counters set n = n + $1   where id = $2   "[..])),
        "the UPDATE ran as a prepared statement: {stmts:?}"
    );
}
