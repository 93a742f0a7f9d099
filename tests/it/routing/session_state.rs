//! Session state with replicas in the fleet and a small pool: named statements,
//! settings and pinned sessions follow their client across server connections.

use super::*;
use crate::common::{self, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_shared_by_ten_clients_on_a_pool_of_two() {
    let env = start(Setup {
        replicas: 2,
        tweak: |c| c.pool.size = 2,
        ..Default::default()
    })
    .await;
    env.direct()
        .await
        .batch_execute("create table counter (client int, n int); grant all on counter to app")
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for id in 0..10i32 {
        let mut c = env.connect().await;
        tasks.push(tokio::spawn(async move {
            let ins = c
                .prepare("insert into counter values ($1, $2)")
                .await
                .unwrap();
            let sel = c
                .prepare("select count(*) from counter where client = $1")
                .await
                .unwrap();
            let echo = c.prepare("select $1::int + 0").await.unwrap();
            for n in 0..10i32 {
                let tx = c.transaction().await.unwrap();
                tx.execute(&ins, &[&id, &n]).await.unwrap();
                let v: i32 = tx.query_one(&echo, &[&n]).await.unwrap().get(0);
                assert_eq!(v, n);
                let cnt: i64 = tx.query_one(&sel, &[&id]).await.unwrap().get(0);
                assert_eq!(cnt, n as i64 + 1, "client {id} sees its own inserts");
                tx.commit().await.unwrap();
                // And outside a transaction, on replicas.
                let v: i32 = c.query_one(&echo, &[&(n * 2)]).await.unwrap().get(0);
                assert_eq!(v, n * 2);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total: i64 = env
        .direct()
        .await
        .query_one("select count(*) from counter", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_settings_follow_the_client_across_connections() {
    let env = start(Setup {
        replicas: 2,
        tweak: |c| c.pool.size = 1,
        ..Default::default()
    })
    .await;
    env.direct()
        .await
        .batch_execute("create schema s1; create schema s2; grant usage on schema s1, s2 to app")
        .await
        .unwrap();
    let a = env.connect().await;
    let b = env.connect().await;
    a.batch_execute("set search_path = s1, public")
        .await
        .unwrap();
    a.batch_execute("set myapp.tenant = 'alpha'").await.unwrap();
    b.batch_execute("set search_path to s2").await.unwrap();
    b.batch_execute("set myapp.tenant = 'beta'").await.unwrap();
    for _ in 0..10 {
        // Reads (replicas) and a transaction (primary): each client sees its own values.
        for (c, path, tenant) in [(&a, "s1, public", "alpha"), (&b, "s2", "beta")] {
            let row = c
                .query_one(
                    "select current_setting('search_path'), current_setting('myapp.tenant')",
                    &[],
                )
                .await
                .unwrap();
            assert_eq!(
                (
                    row.get::<_, String>(0).as_str(),
                    row.get::<_, String>(1).as_str()
                ),
                (path, tenant)
            );
            let got = c
                .simple_query("begin; select current_setting('myapp.tenant'); commit")
                .await
                .unwrap();
            let v = got.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            });
            assert_eq!(v.as_deref(), Some(tenant));
        }
    }
    // A SET rolled back with its transaction does not stick.
    a.batch_execute("begin; set myapp.tenant = 'gamma'; rollback")
        .await
        .unwrap();
    let t: String = a
        .query_one("select current_setting('myapp.tenant')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(t, "alpha");
    // RESET goes back to the default.
    a.batch_execute("reset search_path").await.unwrap();
    let p: String = a
        .query_one("select current_setting('search_path')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(p, "\"$user\", public");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinning_cases_keep_their_session_state() {
    // Each pinned client holds a connection; the pool leaves room for the others.
    let env = start(Setup {
        replicas: 1,
        tweak: |c| c.pool.size = 8,
        ..Default::default()
    })
    .await;
    let primary = primary_port(&env);
    // Temp table: created in one request, used in later ones, reads included.
    let t = env.connect().await;
    t.batch_execute("create temp table tt (a int)")
        .await
        .unwrap();
    t.batch_execute("insert into tt values (1), (2)")
        .await
        .unwrap();
    let n: i64 = t
        .query_one("select count(*) from tt", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    assert_eq!(
        port_of(&t, "select inet_server_port()").await,
        primary,
        "a pinned client stays on its connection"
    );

    // SQL PREPARE / EXECUTE across requests.
    let p = env.connect().await;
    p.batch_execute("prepare two as select 2").await.unwrap();
    let rows = p.simple_query("execute two").await.unwrap();
    assert!(rows
        .iter()
        .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("2"))));

    // Session advisory lock: unlock in a later request finds the same session.
    let l = env.connect().await;
    l.batch_execute("select pg_advisory_lock(42)")
        .await
        .unwrap();
    let unlocked: bool = l
        .query_one("select pg_advisory_unlock(42)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(unlocked);

    // set_config(..., false): the setting stays with its client, and with nobody else.
    let s = env.connect().await;
    s.batch_execute("select set_config('myapp.tenant', 'pinned', false)")
        .await
        .unwrap();
    for c in [&s, &env.connect().await] {
        let v: String = c
            .query_one(
                "select coalesce(current_setting('myapp.tenant', true), '')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let want = if std::ptr::eq(c, &s) { "pinned" } else { "" };
        assert_eq!(v, want);
    }

    // WITH HOLD cursor survives the transaction that declared it.
    let h = env.connect().await;
    h.batch_execute(
        "begin; declare c cursor with hold for select g from generate_series(1, 3) g; commit",
    )
    .await
    .unwrap();
    let rows = h.simple_query("fetch all from c").await.unwrap();
    assert_eq!(
        rows.iter()
            .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
            .count(),
        3
    );

    // LISTEN in transaction mode: notifications still arrive.
    let (listener, mut conn) =
        tokio_postgres::connect(&env.dsn("app", "app", "app"), tokio_postgres::NoTls)
            .await
            .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(m) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            if let Ok(tokio_postgres::AsyncMessage::Notification(n)) = m {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    listener.batch_execute("listen pings").await.unwrap();
    let other = env.connect().await;
    other.batch_execute("notify pings, 'hello'").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("notification arrives");
    assert_eq!(got.as_deref(), Some("hello"));
    // The pinned clients did not take the pool with them: others still run.
    let n: i64 = other
        .query_one("select count(*) from pg_class", &[])
        .await
        .unwrap()
        .get(0);
    assert!(n > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_named_statements_in_transaction_mode() {
    let env = start(Setup {
        replicas: 1,
        tweak: |c| c.pool.size = 2,
        ..Default::default()
    })
    .await;
    env.direct()
        .await
        .batch_execute("create table kv (k int primary key, v text); grant all on kv to app")
        .await
        .unwrap();
    let script = r#"
import asyncio, sys, asyncpg
async def worker(dsn, wid):
    conn = await asyncpg.connect(dsn)
    for i in range(20):
        async with conn.transaction():
            await conn.execute("insert into kv values ($1, $2)", wid * 1000 + i, "w%d" % wid)
            got = await conn.fetchval("select v from kv where k = $1", wid * 1000 + i)
            assert got == "w%d" % wid, got
        # Outside a transaction: asyncpg's statement cache reuses named statements.
        assert await conn.fetchval("select $1::int * 2", i) == i * 2
    await conn.close()
async def main(dsn):
    await asyncio.gather(*(worker(dsn, w) for w in range(6)))
asyncio.run(main(sys.argv[1]))
print("ok")
"#;
    let dsn = env.dsn("app", "app", "app");
    let (ok, out, err) = tokio::task::block_in_place(|| {
        common::run_cmd(std::process::Command::new("python3").args(["-c", script, &dsn]))
    });
    assert!(ok && out.trim() == "ok", "asyncpg failed:\n{out}\n{err}");
    let n: i64 = env
        .direct()
        .await
        .query_one("select count(*) from kv", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 120);
}
