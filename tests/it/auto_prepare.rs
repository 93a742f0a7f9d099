//! `pool.auto_prepare`: simple-protocol statements with liftable integer literals, and
//! requests on the extended protocol's unnamed statement, run as server-side prepared
//! statements, and the client cannot tell. Replies are compared byte for byte with the
//! same requests sent to PostgreSQL directly.

use crate::common::{self, Env, Msg, Setup, Wire};
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

/// One client straight to the primary and one through the proxy, to compare replies.
async fn direct_and_proxied(env: &Env) -> (Wire, Wire) {
    (
        Wire::connect(env.cluster.primary.port, "app", "app", "app", &[]).await,
        Wire::connect(env.port(), "app", "app", "app", &[]).await,
    )
}

/// Every message, tag and body, of the replies to a simple Query.
async fn replies(w: &mut Wire, sql: &str) -> Vec<(char, Vec<u8>)> {
    w.simple(sql)
        .await
        .into_iter()
        .map(|m: Msg| (m.tag as char, m.body))
        .collect()
}

/// Runs `list` on the direct connection, then on the proxied one, and compares every
/// reply. One side at a time: the lists take locks, and each leaves the tables as they
/// were for the other.
async fn same_replies_in_turn(direct: &mut Wire, proxied: &mut Wire, list: &[&str], round: usize) {
    let mut want = Vec::new();
    for sql in list {
        want.push(replies(direct, sql).await);
    }
    for (sql, want) in list.iter().zip(want) {
        let got = replies(proxied, sql).await;
        assert_eq!(got, want, "round {round}: {sql}");
    }
}

/// Asserts that each of `sqls` is a statement kept on the proxy's server connection;
/// returns them all.
async fn assert_kept(env: &Env, sqls: &[&str]) -> Vec<String> {
    let stmts = server_statements(env).await;
    for sql in sqls {
        assert!(
            stmts.iter().any(|s| s == sql),
            "{sql} is kept on the server: {stmts:?}"
        );
    }
    stmts
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
    let (mut direct, mut proxied) = direct_and_proxied(&env).await;
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

/// An INSERT's VALUES rows run prepared too (their whole integer elements lifted), with
/// the replies PostgreSQL gives the Query as sent: assignment casts (to int2, int8,
/// text), a value out of range, a type that does not cast, a duplicate key, several rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_values_run_prepared_with_the_replies_of_the_query() {
    let env = start(true).await;
    env.direct()
        .await
        .batch_execute(
            "create table ins (id int primary key, small int2, big int8, t text, b bool);
             grant all on ins to app;",
        )
        .await
        .unwrap();
    let (mut direct, mut proxied) = direct_and_proxied(&env).await;
    let list: &[&str] = &[
        "insert into ins (id, small, big, t) values (1001, 1234, 3000000000, 5678)",
        "insert into ins (id, small) values (1002, 40000)",
        "insert into ins (id, b) values (1003, 1234)",
        "insert into ins (id) values (1001)",
        "insert into ins (id, big) values (1004, 1234), (1005, 3000000000)",
        "select id, small, big, t from ins order by id",
        "delete from ins",
    ];
    // Each side runs the whole list in turn, which leaves the table empty; the second
    // round runs on the statements the first one prepared.
    for round in 0..2 {
        same_replies_in_turn(&mut direct, &mut proxied, list, round).await;
    }
    assert_kept(
        &env,
        &[
            "insert into ins (id, small, big, t) values ($1  , $2  , $3        , $4  )",
            "insert into ins (id, big) values ($1  , $2  ), ($3  , $4        )",
        ],
    )
    .await;
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
    common::add_a_column_to_items(&env).await;
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

/// One request on the unnamed statement, as drivers send it: Parse, Bind, Describe of
/// the portal (when `describe`), Execute, Sync.
fn unnamed(sql: &str, params: &[&str], describe: bool) -> Vec<u8> {
    let params: Vec<Option<&[u8]>> = params.iter().map(|p| Some(p.as_bytes())).collect();
    let mut req = [
        common::fe::parse("", sql),
        common::fe::bind("", "", &params),
    ]
    .concat();
    if describe {
        req.extend(common::fe::describe_portal(""));
    }
    req.extend([common::fe::execute("", 0), common::fe::sync()].concat());
    req
}

async fn wire_replies(w: &mut Wire, req: &[u8]) -> Vec<(char, Vec<u8>)> {
    w.send(req).await;
    w.until_ready()
        .await
        .into_iter()
        .map(|m: Msg| (m.tag as char, m.body))
        .collect()
}

const UNNAMED: &[(&str, &[&str], bool)] = &[
    // The client's own error at Bind (not an integer) closes the kept statement, which
    // the next request prepares again.
    ("select * from items where id = $1", &["abc"], true),
    ("select * from items where id = $1", &["12345"], true),
    (
        "select id, v from items where id >= $1 order by id limit 20",
        &["19990"],
        false,
    ),
    ("select * from items where id = $1", &["99999"], true),
    (
        "update items set k = k + $1 where id = $2",
        &["1000", "12345"],
        false,
    ),
    // The same value through both: the rows read back stay alike.
    (
        "update items set k = $1 where id = $2 returning id, k",
        &["5", "12345"],
        true,
    ),
    // The client's own errors at Execute and at Parse.
    (
        "select 1/(id - $1) from items where id = 12345",
        &["12345"],
        true,
    ),
    ("selec $1", &["1"], false),
    ("select * from no_such_items where id = $1", &["1"], true),
];

/// Unnamed statements run as statements the server keeps, with every reply, errors
/// included, byte for byte what PostgreSQL sends for the request as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_statements_reply_as_sent_and_run_prepared() {
    let env = start(true).await;
    let (mut direct, mut proxied) = direct_and_proxied(&env).await;
    // Twice: the second run uses the statements the first one prepared.
    for round in 0..2 {
        for (sql, params, describe) in UNNAMED {
            let req = unnamed(sql, params, *describe);
            let want = wire_replies(&mut direct, &req).await;
            let got = wire_replies(&mut proxied, &req).await;
            assert_eq!(got, want, "round {round}: {sql} {params:?}");
        }
    }
    let stmts = assert_kept(
        &env,
        &[
            "select * from items where id = $1",
            "update items set k = k + $1 where id = $2",
        ],
    )
    .await;
    assert!(
        !stmts
            .iter()
            .any(|s| s.contains("no_such") || s.contains("selec ")),
        "a statement that failed to prepare is not kept: {stmts:?}"
    );
}

/// After DDL the kept statement meets "cached plan must not change result type"; the
/// client, whose unnamed statement is parsed anew each time, gets the new columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_table_behind_an_unnamed_statement_is_invisible() {
    let env = start(true).await;
    let mut w = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    let req = unnamed("select * from items where id = $1", &["12345"], false);
    common::unnamed_read_across_a_table_change(&env, &mut w, &req).await;
}

/// A later Bind or Describe of the unnamed statement, without its Parse, finds the
/// client's statement: the proxy gives the server the Parse it ran under another name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unnamed_statement_stays_the_clients_own() {
    let env = start(true).await;
    let mut w = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    let sql = "select v from items where id = $1";
    w.send(&unnamed(sql, &["12345"], false)).await;
    assert_eq!(
        common::describe_all(&w.until_ready().await),
        "1 2 D C(SELECT 1) Z(I)"
    );
    let again = [
        common::fe::bind("", "", &[Some(&b"54321"[..])]),
        common::fe::execute("", 0),
        common::fe::sync(),
    ]
    .concat();
    w.send(&again).await;
    assert_eq!(
        common::describe_all(&w.until_ready().await),
        "2 C(SELECT 0) Z(I)"
    );
    w.send(&[common::fe::describe_statement(""), common::fe::sync()].concat())
        .await;
    let r = w.until_ready().await;
    assert_eq!(
        common::describe_all(&r).split(' ').next(),
        Some("t"),
        "{r:?}"
    );
    assert!(server_statements(&env).await.iter().any(|s| s == sql));
}

/// Inside a transaction block, writes without RETURNING run as prepared statements once
/// the connection has them (prepared between transactions, after their first run as
/// sent), with every reply, errors and the block's status included, byte for byte what
/// PostgreSQL sends for the Queries as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_in_a_transaction_block_run_prepared_once_known() {
    let env = start(true).await;
    let (mut direct, mut proxied) = direct_and_proxied(&env).await;
    let block: &[&str] = &[
        "begin",
        "update items set k = k + 1000 where id = 12345",
        "select k from items where id = 12345",
        "insert into items values (30001, 1000, 'new')",
        "delete from items where id = 30001",
        "update items set k = k - 1000 where id = 12345 returning k",
        "commit",
        // An error inside the block: the key exists.
        "begin",
        "update items set k = k + 1000 where id = 12345",
        "insert into items values (12345, 1000, 'dup')",
        "update items set k = k + 1000 where id = 12345",
        "rollback",
        // An error from a prepared write itself (a duplicate key).
        "begin",
        "update items set id = 1 where id = 12345",
        "rollback",
        "select k from items where id = 12345",
    ];
    // The first round runs the writes as sent and prepares them after the block; the
    // others run them prepared, the last after a table change. Each side runs the whole
    // list in turn (the blocks lock the same row), which leaves the table as it was.
    for round in 0..4 {
        if round == 3 {
            common::add_a_column_to_items(&env).await;
        }
        same_replies_in_turn(&mut direct, &mut proxied, block, round).await;
    }
    // A table change that breaks a kept statement: it fails at Bind, with the error the
    // Query as sent gets, and the block is aborted just as it would be.
    env.direct()
        .await
        .batch_execute("alter table items rename column k to k2")
        .await
        .unwrap();
    for sql in [
        "begin",
        "update items set k = k + 1000 where id = 12345",
        "select 1",
        "rollback",
    ] {
        let want = replies(&mut direct, sql).await;
        let got = replies(&mut proxied, sql).await;
        assert_eq!(got, want, "after the rename: {sql}");
    }
    env.direct()
        .await
        .batch_execute("alter table items rename column k2 to k")
        .await
        .unwrap();
    // (A string literal is not lifted: the INSERT runs as sent.)
    let stmts = assert_kept(
        &env,
        &[
            "update items set k = k + $1   where id = $2   ",
            "delete from items where id = $1   ",
        ],
    )
    .await;
    assert!(
        !stmts.iter().any(|s| s.contains("returning")),
        "a write with RETURNING is not prepared in a block: {stmts:?}"
    );
}
