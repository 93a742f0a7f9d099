//! A cancel while a read waits for a replica to catch up (or for a connection to probe
//! one) is answered at once with 57014, and the read never runs.

use super::*;
use crate::common::{self, wait_for};

/// Sends the client's cancel once `ready` holds (polled for up to 20 s).
async fn cancel_once<F, Fut>(token: tokio_postgres::CancelToken, what: &str, ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<()>>,
{
    wait_for(what, Duration::from_secs(20), ready).await;
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel request sent");
}

/// Writes row 1 of kv, so that its reads need that position, and returns the client's
/// cancel token and its read of the row, answered within 20 s or timed out.
async fn write_then_read(
    c: &tokio_postgres::Client,
) -> (
    tokio_postgres::CancelToken,
    impl std::future::Future<
            Output = Result<
                Result<tokio_postgres::Row, tokio_postgres::Error>,
                tokio::time::error::Elapsed,
            >,
        > + '_,
) {
    c.execute("insert into kv values (1, 1)", &[])
        .await
        .unwrap();
    let read = tokio::time::timeout(
        Duration::from_secs(20),
        c.query_one("select v from kv where k = 1", &[]),
    );
    (c.cancel_token(), read)
}

/// A cancelled read: answered (not timed out) with 57014, and never run.
fn assert_cancelled(
    result: Result<Result<tokio_postgres::Row, tokio_postgres::Error>, tokio::time::error::Elapsed>,
) {
    match result.expect("the cancel is answered before the wait ends") {
        Ok(row) => panic!("expected 57014, the read ran: {row:?}"),
        Err(e) => assert_eq!(common::sqlstate(&e).as_deref(), Some("57014"), "{e:?}"),
    }
}

/// A cancel while a read waits for a replica to catch up is answered at once with
/// 57014, as PostgreSQL answers a cancelled statement, and the read never runs. The
/// wait here would otherwise last a minute (consistency.max_wait_ms) and then serve the
/// read from the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_while_a_read_waits_for_a_replica_answers_at_once() {
    let env =
        consistency_env("consistency:\n  max_wait_ms: 60000\n  wait_for_replica: always\n").await;
    pause_all(&env);
    let c = env.connect().await;
    let (token, read) = write_then_read(&c).await;
    let replica = env.cluster.replicas[0].clone();
    // The read is waiting once the proxy has asked a replica how far it replayed.
    let canceller = cancel_once(token, "a replay probe on a paused replica", || {
        let replica = replica.clone();
        async move {
            let probes = tokio::task::spawn_blocking(move || {
                replica.psql(
                    "postgres",
                    "postgres",
                    "select count(*) from pg_stat_activity \
                     where query = 'SELECT pg_last_wal_replay_lsn()::text'",
                )
            })
            .await
            .unwrap()
            .unwrap();
            (probes != "0").then_some(())
        }
    });
    let (result, ()) = tokio::join!(read, canceller);
    assert_cancelled(result);
    resume_all(&env);
    // The client goes on: the next read waits for the replicas, which now catch up.
    let v: i32 = c
        .query_one("select v from kv where k = 1", &[])
        .await
        .expect("client works after the cancel")
        .get(0);
    assert_eq!(v, 1);
}

/// The same while the replay probe itself waits for a connection to the replica (its
/// pool is exhausted): the cancel of that inner wait must still end the read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_while_a_replay_probe_waits_for_a_connection_answers_at_once() {
    // One connection per node, kept by the sleepers below; a checkout wait so long that
    // only the cancel can end the probe's.
    let env = start(Setup {
        replicas: 2,
        extra_yaml: "consistency:\n  max_wait_ms: 60000\n  wait_for_replica: always\nrouting:\n  sticky_reads: false\n".into(),
        tweak: |c| {
            c.pool.size = 1;
            c.pool.checkout_timeout_ms = 60_000;
            c.pool.multiplex_reads = pgwarden::config::MultiplexReads::Off;
        },
        ..Default::default()
    })
    .await;
    env.direct()
        .await
        .batch_execute("create table kv (k int primary key, v int); grant all on kv to app;")
        .await
        .unwrap();
    tokio::task::block_in_place(|| {
        env.cluster
            .wait_replicas_caught_up(Duration::from_secs(30))
            .unwrap();
    });
    pause_all(&env);
    // Reads without a position to wait for take turns across the replicas: these two hold
    // both replicas' only connection.
    let mut sleepers = Vec::new();
    for _ in 0..2 {
        let c = env.connect().await;
        sleepers.push(tokio::spawn(async move {
            let _ = c.simple_query("select pg_sleep(60)").await;
        }));
    }
    let sleeping = |port: usize| {
        env.cluster.replicas[port]
            .psql(
                "postgres",
                "postgres",
                "select count(*) from pg_stat_activity where query = 'select pg_sleep(60)'",
            )
            .unwrap()
            == "1"
    };
    wait_for(
        "both replicas held by a sleeping read",
        Duration::from_secs(20),
        || {
            let held = tokio::task::block_in_place(|| sleeping(0) && sleeping(1));
            async move { held.then_some(()) }
        },
    )
    .await;
    let c = env.connect().await;
    let (token, read) = write_then_read(&c).await;
    let pools = &env.proxy.shared.pools;
    // A replica pool's waiter is the probe: the primary's can be the commit-position
    // sampler or the read's own Parse, and a cancel then would find nothing to cancel.
    let canceller = cancel_once(token, "the probe waiting for a replica connection", || {
        let waiting = pools
            .all()
            .iter()
            .any(|(k, e)| k.node != "primary" && e.pool.status().waiting > 0);
        async move { waiting.then_some(()) }
    });
    let (result, ()) = tokio::join!(read, canceller);
    assert_cancelled(result);
    for s in sleepers {
        s.abort();
    }
}
