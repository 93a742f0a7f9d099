//! The finer read-your-writes rule: a commit bounds only the reads of tables it could
//! have changed, learnt from the catalog (here a trigger on one table writing another,
//! and a view of that other table). With both replicas paused, a read of a table the
//! trigger wrote must not go to a replica, while reads of an unrelated table still do.

use super::*;
use crate::common::wait_for;

const SCHEMA: &str = "
    create table src (k int primary key, v int);
    create table sink (k int primary key, v int);
    create view sink_view as select k, v from sink;
    create function copy_to_sink() returns trigger language plpgsql as $$
    begin insert into sink values (new.k, new.v); return new; end $$;
    create trigger copy after insert on src for each row execute function copy_to_sink();
    grant all on src, sink, sink_view to app;";

/// Runs `rounds` writes to src; after each, reads the row the trigger wrote in sink (on
/// the writing connection, through the view, on another connection) and an unrelated
/// table. Returns (stale reads, unrelated reads served by replicas).
async fn rounds(env: &Env, first: i32, rounds: i32, mode: &str) -> (Vec<String>, i32) {
    let replica_ports: HashSet<i32> = env.cluster.replicas.iter().map(|r| r.port as i32).collect();
    let (a, b) = (env.connect().await, env.connect().await);
    for c in [&a, &b] {
        c.batch_execute(&format!("set pgwarden.consistency = {mode}"))
            .await
            .unwrap();
    }
    let (mut stale, mut unrelated_on_replicas) = (Vec::new(), 0);
    for k in first..first + rounds {
        a.execute("insert into src values ($1, $1)", &[&k])
            .await
            .unwrap();
        let p = port_of(&a, "select inet_server_port() from other where k = 1").await;
        unrelated_on_replicas += replica_ports.contains(&p) as i32;
        let mut reads = vec![
            (&a, "select count(*) from sink where k = $1"),
            (&a, "select count(*) from sink_view where k = $1"),
        ];
        // Other sessions need the commit too, in strict mode only.
        if mode == "strict" {
            reads.push((&b, "select count(*) from sink where k = $1"));
        }
        for (c, sql) in reads {
            let n: i64 = c.query_one(sql, &[&k]).await.unwrap().get(0);
            if n != 1 {
                stale.push(format!("{mode} k {k}: {sql}"));
            }
        }
    }
    (stale, unrelated_on_replicas)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_s_table_is_read_fresh_and_unrelated_reads_stay_on_replicas() {
    let env = consistency_env("").await;
    env.direct().await.batch_execute(SCHEMA).await.unwrap();
    tokio::task::block_in_place(|| env.cluster.wait_replicas_caught_up(DEADLINE)).unwrap();
    pause_all(&env);
    // The proxy reads the catalog on the first write it needs it for; until it has
    // it, writes bound every read of their session (so unrelated reads leave replicas).
    let mut k = 0;
    wait_for("the catalog model in use", DEADLINE, || {
        k += 1;
        let key = 100_000 + k;
        let env = &env;
        async move {
            let (stale, on_replicas) = rounds(env, key, 1, "session").await;
            assert!(stale.is_empty(), "{stale:?}");
            (on_replicas == 1).then_some(())
        }
    })
    .await;
    for mode in ["strict", "session"] {
        let first = if mode == "strict" { 0 } else { 1000 };
        let (stale, on_replicas) = rounds(&env, first, 20, mode).await;
        assert!(stale.is_empty(), "stale reads: {stale:#?}");
        // The commit is still being captured when the unrelated read comes, and a
        // whole-session rule would send it to the primary every time.
        assert!(
            on_replicas >= 18,
            "{mode}: only {on_replicas} of 20 unrelated reads right after a write on replicas"
        );
    }
    resume_all(&env);
}

/// A write through a function the proxy cannot follow (dynamic SQL) keeps the
/// whole-session rule: the writing session's next read of any table needs its commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_dynamic_sql_bounds_every_read_of_its_session() {
    let env = consistency_env("").await;
    env.direct()
        .await
        .batch_execute(
            "create function bump(t text) returns void language plpgsql as $$
             begin execute format('update %I set v = v + 1 where k = 1', t); end $$;
             grant execute on function bump(text) to app;",
        )
        .await
        .unwrap();
    tokio::task::block_in_place(|| env.cluster.wait_replicas_caught_up(DEADLINE)).unwrap();
    pause_all(&env);
    let a = env.connect().await;
    a.batch_execute("set pgwarden.consistency = session")
        .await
        .unwrap();
    for i in 1..=5 {
        // Routed to the primary by its row lock (the function is no listed writer).
        a.batch_execute("select bump('other') from other where k = 1 for update")
            .await
            .unwrap();
        let v: i32 = a
            .query_one("select v from other where k = 1", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            v,
            1 + i,
            "round {i}: a stale read after a write through dynamic SQL"
        );
    }
    resume_all(&env);
}
