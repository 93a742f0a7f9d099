//! More transparency cases (DESIGN §3.1): session state under transaction pooling,
//! COPY bookkeeping, startup options.

use super::*;
use crate::common::{fe, one_row, Wire};
use std::collections::HashSet;
use tokio_postgres::NoTls;

async fn start_pool_of(size: usize) -> Env {
    let tweak: fn(&mut pgwarden::config::Config) = match size {
        1 => |c| {
            c.pool.size = 1;
            c.pool.checkout_timeout_ms = 3_000;
        },
        2 => |c| c.pool.size = 2,
        _ => unreachable!("pool sizes used here: 1, 2"),
    };
    common::start(Setup {
        tweak,
        ..Default::default()
    })
    .await
}

/// Makes the pool (size 2) hold two server connections, and checks it does.
async fn open_two_server_connections(env: &Env) {
    let x = env.connect().await;
    let y = env.connect().await;
    x.batch_execute("BEGIN").await.unwrap();
    y.batch_execute("select 1").await.unwrap(); // x holds the first: y needs a second
    x.batch_execute("COMMIT").await.unwrap();
    let n: i64 = env
        .direct()
        .await
        .query_one(
            "select count(*) from pg_stat_activity where usename = 'app' and application_name <> 'pgwarden-monitor'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2, "two server connections in the pool");
}

/// Runs `step` 6 times alone and 6 times while another client holds a server connection
/// in an open transaction. Whatever order the pool hands out connections in, the
/// stepping client lands on both of the two.
async fn on_both_servers<F, Fut>(env: &Env, mut step: F)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for i in 0..6 {
        step(i).await;
    }
    let holder = env.connect().await;
    for i in 6..12 {
        holder.batch_execute("BEGIN").await.unwrap();
        step(i).await;
        holder.batch_execute("COMMIT").await.unwrap();
    }
}

/// An extended-protocol COPY FROM STDIN (Bind/Execute/Sync, CopyData, CopyDone + Sync,
/// as tokio-postgres sends it) owes one ReadyForQuery for its two Syncs. Once it has
/// come and the client is idle, the server connection must go back to the pool: with
/// pool.size = 1 another client must get it (instead of 53300 after the checkout timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_gives_the_server_back_in_transaction_mode() {
    let env = start_pool_of(1).await;
    let mut a = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    a.simple("create table copy_r (id int)").await;
    let mut req = fe::parse("", "copy copy_r from stdin");
    req.extend(fe::bind("", "", &[]));
    req.extend(fe::execute("", 0));
    req.extend(fe::sync());
    w_expect(&mut a, &req, &["1", "2", "G"]).await;
    let mut req = fe::copy_data(b"1\n2\n3\n");
    req.extend(fe::copy_done());
    req.extend(fe::sync());
    a.send(&req).await;
    assert_eq!(
        common::describe_all(&a.until_ready().await),
        "C(COPY 3) Z(I)"
    );

    // a is idle (and still connected); b needs the one server connection.
    let b = env.connect().await;
    let n: i64 = b
        .query_one("select count(*) from copy_r", &[])
        .await
        .unwrap_or_else(|e| {
            panic!(
                "another client after a finished COPY IN: {e} ({:?})",
                sqlstate(&e)
            )
        })
        .get(0);
    assert_eq!(n, 3);
    let msgs = a.simple("select count(*) from copy_r").await;
    assert_eq!(
        msgs.iter().find_map(Msg::data_row),
        Some(vec![Some(b"3".to_vec())])
    );
}

/// Sends `req` and checks the next replies, one by one.
async fn w_expect(w: &mut Wire, req: &[u8], replies: &[&str]) {
    w.send(req).await;
    for want in replies {
        assert_eq!(&w.recv().await.describe(), want);
    }
}

/// A statement prepared with protocol Parse keeps working when the client lands on
/// another server connection ("re-prepared on demand").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statement_follows_the_client_across_servers() {
    let env = start_pool_of(2).await;
    open_two_server_connections(&env).await;
    let a = env.connect().await;
    let st = a
        .prepare("select $1::int * 2, pg_backend_pid()")
        .await
        .expect("prepare");
    let pids = std::sync::Mutex::new(HashSet::new());
    on_both_servers(&env, |i| {
        let (a, st, pids) = (&a, &st, &pids);
        async move {
            let i = i as i32;
            let r = a.query_one(st, &[&i]).await.unwrap_or_else(|e| {
                panic!(
                    "execution {i} of the prepared statement: {e} ({:?})",
                    sqlstate(&e)
                )
            });
            assert_eq!(r.get::<_, i32>(0), i * 2);
            pids.lock().unwrap().insert(r.get::<_, i32>(1));
        }
    })
    .await;
    assert_eq!(
        pids.lock().unwrap().len(),
        2,
        "the client ran on both server connections"
    );
}

/// SQL-level PREPARE pins the client to its server connection (DESIGN §3.1): EXECUTE
/// keeps working in later transactions, always on that one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_prepare_pins_the_client_to_its_server() {
    let env = start_pool_of(2).await;
    open_two_server_connections(&env).await;
    let a = env.connect().await;
    a.batch_execute("PREPARE twice(int) AS SELECT $1 * 2, pg_backend_pid()")
        .await
        .expect("PREPARE");
    let pids = std::sync::Mutex::new(HashSet::new());
    for i in 0..12 {
        let sql = format!("EXECUTE twice({i})");
        let r = a
            .simple_query(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e} ({:?})", sqlstate(&e)));
        let row = &statements(&r)[0].0[0];
        assert_eq!(row[0], Some((i * 2).to_string()));
        pids.lock().unwrap().insert(row[1].clone());
    }
    assert_eq!(
        pids.lock().unwrap().len(),
        1,
        "a pinned client stays on one server"
    );
    // The other connection still serves everyone else.
    let b = env.connect().await;
    b.simple_query("select 1").await.expect("unpinned client");
}

/// The session's TimeZone and the server backend it ran on.
async fn timezone_and_pid(c: &tokio_postgres::Client) -> (String, String) {
    let r = c
        .simple_query("select current_setting('TimeZone'), pg_backend_pid()")
        .await
        .expect("timezone query");
    let row = &statements(&r)[0].0[0];
    (row[0].clone().unwrap(), row[1].clone().unwrap())
}

/// A SET outside a transaction is session state: it stays with its client on every
/// server connection it lands on, and never shows up in another client's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_stays_with_its_client() {
    let env = start_pool_of(2).await;
    open_two_server_connections(&env).await;
    let default_tz: String = env
        .direct()
        .await
        .query_one("show timezone", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(default_tz, "Pacific/Chatham");

    let a = env.connect().await;
    a.batch_execute("SET TimeZone = 'Pacific/Chatham'")
        .await
        .unwrap();

    // Another client, on either server connection, sees the default.
    let b = env.connect().await;
    let pids = std::sync::Mutex::new(HashSet::new());
    on_both_servers(&env, |i| {
        let (b, pids, default_tz) = (&b, &pids, &default_tz);
        async move {
            let (tz, pid) = timezone_and_pid(b).await;
            assert_eq!(
                &tz, default_tz,
                "round {i}: another client's SET leaked into this session"
            );
            pids.lock().unwrap().insert(pid);
        }
    })
    .await;
    assert_eq!(
        pids.lock().unwrap().len(),
        2,
        "b ran on both server connections"
    );

    // The client that SET it keeps it on either server connection.
    pids.lock().unwrap().clear();
    on_both_servers(&env, |i| {
        let (a, pids) = (&a, &pids);
        async move {
            let (tz, pid) = timezone_and_pid(a).await;
            assert_eq!(
                tz, "Pacific/Chatham",
                "round {i}: the client's SET was lost"
            );
            pids.lock().unwrap().insert(pid);
        }
    })
    .await;
    assert_eq!(
        pids.lock().unwrap().len(),
        2,
        "a ran on both server connections"
    );
}

/// A request pipelined behind another counts only at its own ReadyForQuery: a SET
/// rolled back with its transaction, sent while an earlier request is still running, is
/// not taken for committed when the earlier one's ReadyForQuery arrives (tokio-postgres
/// sends a dropped statement's Close+Sync just this way, ahead of the next Query), and a
/// SET pipelined behind a failing Query is kept. Checked after another client has used
/// the one server connection, so the session's settings must be re-applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sets_pipelined_behind_another_request_count_at_their_own_reply() {
    let env = start_pool_of(1).await;
    let mut w = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    let mut other = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    w.simple("set myapp.tenant = 'alpha'").await;
    let rolled_back = || fe::query("begin; set myapp.tenant = 'gamma'; rollback");
    let cases = [
        (fe::query("select pg_sleep(0.02)"), rolled_back(), "alpha"),
        (
            [fe::close_statement("nothing"), fe::sync()].concat(),
            rolled_back(),
            "alpha",
        ),
        (
            fe::query("select 1/0"),
            fe::query("set myapp.tenant = 'delta'"),
            "delta",
        ),
    ];
    for (first, later, want) in cases {
        w.send(&[first, later].concat()).await;
        w.until_ready().await;
        w.until_ready().await;
        // The other client takes the server connection over with its own value.
        other.simple("set myapp.tenant = 'other'").await;
        let row = one_row(&mut other, "select current_setting('myapp.tenant')").await;
        assert_eq!(row[0].as_deref(), Some(&b"other"[..]));
        let row = one_row(&mut w, "select current_setting('myapp.tenant')").await;
        assert_eq!(
            String::from_utf8_lossy(row[0].as_deref().unwrap_or_default()),
            want
        );
    }
}

/// A SET in a block that rolls back to a savepoint after an error and then commits is
/// committed: it follows its client, and does not leak to the next client of the server
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_committed_after_rollback_to_savepoint_stays_with_its_client() {
    let env = start_pool_of(1).await;
    let mut w = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    let mut other = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    w.simple("begin; set myapp.tenant = 's1'; savepoint a; select 1/0")
        .await;
    w.simple("rollback to a; commit").await;
    let row = one_row(
        &mut other,
        "select coalesce(current_setting('myapp.tenant', true), '')",
    )
    .await;
    assert_eq!(row[0].as_deref(), Some(&b""[..]), "a SET leaked");
    let row = one_row(&mut w, "select current_setting('myapp.tenant')").await;
    assert_eq!(row[0].as_deref(), Some(&b"s1"[..]));
}

/// A SET under a savepoint that ROLLBACK TO undoes is gone, as PostgreSQL has it, though
/// the block commits: the client's next query, wherever it runs, does not see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_undone_by_rollback_to_savepoint_is_gone() {
    let env = start_pool_of(2).await;
    let mut w = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    let mut other = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    w.simple("begin; savepoint a; set myapp.tenant = 's1'")
        .await;
    w.simple("rollback to a; commit").await;
    // The other client holds a connection (the one w used, if w let it go), so w's
    // next query runs on the pool's other one unless w kept its own.
    other.simple("begin").await;
    let row = one_row(
        &mut w,
        "select coalesce(current_setting('myapp.tenant', true), '')",
    )
    .await;
    assert_eq!(
        row[0].as_deref(),
        Some(&b""[..]),
        "the undone SET came back"
    );
    other.simple("commit").await;
    let row = one_row(
        &mut other,
        "select coalesce(current_setting('myapp.tenant', true), '')",
    )
    .await;
    assert_eq!(row[0].as_deref(), Some(&b""[..]), "a SET leaked");
}

/// A cancel of a request that still waits for a server connection (its pool is
/// exhausted) is answered at once with 57014, and the request never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_while_waiting_for_a_server_answers_at_once() {
    let env = start_pool_of(1).await;
    env.direct()
        .await
        .batch_execute("create table waited (id int); grant all on waited to app;")
        .await
        .unwrap();
    let holder = env.connect().await;
    let client = env.connect().await;
    // The pool's only connection stays with this open transaction.
    holder.batch_execute("begin; select 1").await.unwrap();
    let token = client.cancel_token();
    let insert = client.simple_query("insert into waited values (1)");
    // Cancels go on until the insert ends: the pool also counts the proxy's first,
    // non-waiting try as a waiter, and a cancel landing then finds nothing to cancel (as
    // one landing between two queries does in PostgreSQL). Only a cancel of the wait can
    // end the insert before the holder commits.
    let canceller = async {
        let pools = &env.proxy.shared.pools;
        common::wait_for("the insert waiting for a connection", DEADLINE, || {
            let waiting = pools.all().iter().any(|(_, e)| e.pool.status().waiting > 0);
            async move { waiting.then_some(()) }
        })
        .await;
        loop {
            token
                .cancel_query(NoTls)
                .await
                .expect("cancel request sent");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let result = tokio::select! {
        r = insert => r,
        never = canceller => never,
    };
    // Without the cancel it would fail after pool.checkout_timeout_ms with 53300.
    expect_code(result, "57014", "insert cancelled while waiting");
    holder.batch_execute("commit").await.unwrap();
    let n: i64 = client
        .query_one("select count(*) from waited", &[])
        .await
        .expect("client works after the cancel")
        .get(0);
    assert_eq!(n, 0, "the cancelled insert ran");
}

/// `options=-c name=value` in the connection string (libpq and most drivers support
/// it) sets the parameter for the session, as it does against PostgreSQL.
async fn startup_options_reach_the_session(env: &Env) {
    let opts = "options=-c%20TimeZone%3DAsia%2FKolkata";
    // Directly, the same DSN form works.
    let (direct, conn) = tokio_postgres::connect(
        &format!("{}?{opts}", env.cluster.primary.dsn("app", "app", "app")),
        NoTls,
    )
    .await
    .expect("direct connect with options");
    tokio::spawn(conn);
    assert_eq!(
        simple_value(&direct, "show timezone").await,
        s("Asia/Kolkata")
    );

    let (c, conn) =
        tokio_postgres::connect(&format!("{}&{opts}", env.dsn("app", "app", "app")), NoTls)
            .await
            .expect("connect through the proxy with options");
    tokio::spawn(conn);
    assert_eq!(simple_value(&c, "show timezone").await, s("Asia/Kolkata"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_options_in_transaction_mode() {
    startup_options_reach_the_session(&start_mode("transaction").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_options_in_session_mode() {
    startup_options_reach_the_session(&start_mode("session").await).await;
}
