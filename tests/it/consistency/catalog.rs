//! The catalog clock: what one connection creates (a type, a table, a function, a
//! prepared transaction) is there for the very next read of any other connection, even
//! with every replica's replay paused; reads go back to replicas once they catch up.

use super::*;
use crate::common::{sqlstate, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_created_on_one_connection_is_usable_at_once_on_another() {
    let env = consistency_env("").await;
    let replica_ports: HashSet<i32> = env.cluster.replicas.iter().map(|r| r.port as i32).collect();
    // Replicas serve reads before: the rounds below would pass on the primary alone.
    let b = env.connect().await;
    wait_for("a read on a replica", DEADLINE, || async {
        let p = port_of(&b, "select inet_server_port() from other where k = 1").await;
        replica_ports.contains(&p).then_some(())
    })
    .await;
    pause_all(&env);
    let a = env.connect().await;
    let mut errors = Vec::new();
    for i in 0..10 {
        a.batch_execute(&format!(
            "create type mood_{i} as enum ('calm', 'glad');
             create table t_{i} (m mood_{i});
             create function f_{i}() returns int language sql as 'select {i}';"
        ))
        .await
        .unwrap();
        for sql in [
            format!("select 'glad'::mood_{i}::text"),
            format!("select count(*)::text from t_{i}"),
            format!("select f_{i}()::text"),
        ] {
            if let Err(e) = b.query_one(sql.as_str(), &[]).await {
                errors.push(format!("{sql}: {:?} {e}", sqlstate(&e)));
            }
        }
    }
    assert!(errors.is_empty(), "{} errors: {errors:#?}", errors.len());
    // Once the replicas have replayed the changes, reads go back to them.
    resume_all(&env);
    tokio::task::block_in_place(|| env.cluster.wait_replicas_caught_up(DEADLINE)).unwrap();
    wait_for("reads back on replicas", DEADLINE, || async {
        let p = port_of(
            &b,
            "select inet_server_port() + (select count(*) from t_9)::int",
        )
        .await;
        replica_ports.contains(&p).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_transaction_is_seen_at_once_from_another_connection() {
    let env = consistency_env("").await;
    pause_all(&env);
    let (a, b) = (env.connect().await, env.connect().await);
    let prepared = "select count(*) from pg_prepared_xacts where gid = 'gx'";
    a.batch_execute("begin; insert into kv values (7, 70); prepare transaction 'gx'")
        .await
        .unwrap();
    let n: i64 = b.query_one(prepared, &[]).await.unwrap().get(0);
    assert_eq!(n, 1, "the prepared transaction is listed");
    a.batch_execute("commit prepared 'gx'").await.unwrap();
    let n: i64 = b.query_one(prepared, &[]).await.unwrap().get(0);
    assert_eq!(n, 0, "committed: no longer listed");
    let v: Option<i32> = b
        .query_one("select (select v from kv where k = 7)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, Some(70), "its write is read back");
    resume_all(&env);
}
