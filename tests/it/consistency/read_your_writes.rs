//! Read-your-writes: a commit's position is captured (also after ROLLBACK TO a savepoint,
//! shared between commits within an interval), and a read that needs it never goes to a
//! replica that has not replayed it; a position that cannot be read sends the table's
//! reads to the primary, and with capture off only the lag budget holds. Also the proxy's
//! own position and probe queries, prepared once per server connection.

use super::*;
use crate::common::wait_for;
use pgwarden::config::MultiplexReads;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_reads_with_a_paused_replica() {
    stale_reads_with_a_paused_replica("", false).await;
}

/// As above, with reads that always wait for a replica (up to max_wait_ms): some reads
/// of just-written rows are then served by the replica that replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_reads_with_a_paused_replica_when_reads_wait() {
    stale_reads_with_a_paused_replica("consistency:\n  wait_for_replica: always\n", true).await;
}

/// As the first, with every read that may on a shared lane: reads that need a position
/// no replica has take a lane on the primary, and see the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_reads_with_a_paused_replica_on_lanes() {
    let env = consistency_env_tweaked("", |c| {
        c.pool.multiplex_reads = MultiplexReads::Always;
        c.pool.multiplex_slow_ms = 600_000;
    })
    .await;
    let env = stale_reads_in(env, false).await;
    let lanes = env.proxy.shared.lanes.nodes();
    assert!(
        lanes.iter().any(|n| n == "primary"),
        "no read took a lane on the primary: lanes on {lanes:?}"
    );
}

async fn stale_reads_with_a_paused_replica(yaml: &str, reads_wait: bool) -> Env {
    stale_reads_in(consistency_env(yaml).await, reads_wait).await
}

async fn stale_reads_in(env: Env, reads_wait: bool) -> Env {
    let paused_port = env.cluster.replicas[0].port as i32;
    let replica_ports: HashSet<i32> = env.cluster.replicas.iter().map(|r| r.port as i32).collect();
    tokio::task::block_in_place(|| pause_replay(&env, 0));

    let stale = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let on_replicas = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..4i32 {
        let a = env.connect().await;
        let b = env.connect().await;
        // Commits whose record may not be flushed at the reply: the session's setting
        // (worker 1) or the transaction's own (worker 2, below).
        if w == 1 {
            a.batch_execute("set synchronous_commit = off")
                .await
                .unwrap();
        }
        let in_txn = if w == 2 {
            "set local synchronous_commit = off; "
        } else {
            ""
        };
        let (stale, reads, on_replicas) = (stale.clone(), reads.clone(), on_replicas.clone());
        let replica_ports = replica_ports.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25i32 {
                let k = w * 1000 + i;
                // 1. Write, then read back at once on the same connection.
                a.execute("insert into kv values ($1, $2)", &[&k, &1])
                    .await
                    .unwrap();
                let v = read_kv(&a, k, &replica_ports).await;
                // 2. Another session reads what the first one just saw committed.
                let v2 = read_kv(&b, k, &replica_ports).await;
                // 3. A write inside a transaction, read after COMMIT.
                a.batch_execute(&format!(
                    "begin; {in_txn}update kv set v = 2 where k = {k}; commit"
                ))
                .await
                .unwrap();
                let v3 = read_kv(&b, k, &replica_ports).await;
                reads.fetch_add(3, Ordering::Relaxed);
                for (step, ((got, replica), want)) in [(v, 1), (v2, 1), (v3, 2)].into_iter().enumerate() {
                    if got != Some(want) {
                        eprintln!("STALE worker {w} k {k} step {} got {got:?} want {want} replica {replica}", step + 1);
                        stale.fetch_add(1, Ordering::Relaxed);
                    }
                    if replica {
                        on_replicas.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (reads, on_replicas) = (
        reads.load(Ordering::Relaxed),
        on_replicas.load(Ordering::Relaxed),
    );
    assert_eq!(
        stale.load(Ordering::Relaxed),
        0,
        "stale reads out of {reads}"
    );
    // Reads of just-written rows that wait (max_wait_ms) for the replica that replays
    // are sometimes served by it; the figure goes to the issue note.
    eprintln!("read-after-write share on replicas: {on_replicas}/{reads}");
    assert!(
        !reads_wait || on_replicas > 0,
        "every read of a just-written row went to the primary"
    );

    // Reads of a table nobody wrote still go to replicas, the paused one included.
    let fresh = env.connect().await;
    let mut seen = HashSet::new();
    for _ in 0..20 {
        let p = port_of(&fresh, "select inet_server_port() from other where k = 1").await;
        assert!(
            replica_ports.contains(&p),
            "read of an untouched table went to {p}"
        );
        seen.insert(p);
    }
    assert!(
        seen.contains(&paused_port),
        "the paused replica still serves reads that do not need new data"
    );
    tokio::task::block_in_place(|| resume_replay(&env, 0));
    env
}

/// A block that rolls back to a savepoint after an error and then commits did commit
/// its write (PostgreSQL reports the ROLLBACK TO with a ROLLBACK tag): its position is
/// captured, so a read of the table never goes to a replica that has not replayed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_after_rollback_to_savepoint_is_read_back() {
    let env = consistency_env("").await;
    pause_all(&env);
    let c = env.connect().await;
    c.batch_execute("begin; update other set v = -1 where k = 7; savepoint s")
        .await
        .unwrap();
    assert!(c.batch_execute("select 1/0").await.is_err());
    c.batch_execute("rollback to s; commit").await.unwrap();
    let v: i32 = c
        .query_one("select v from other where k = 7", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, -1, "a stale read of a committed write");
    resume_all(&env);
}

/// A commit whose position cannot be read (here the role may not call the WAL position
/// functions) costs the client nothing: its writes succeed, and the written table is
/// read on the primary, never on a replica that lacks the write, while reads of other
/// tables still go to replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_position_cannot_be_read_is_never_read_stale() {
    let env = consistency_env("routing:\n  sticky_reads: false\n").await;
    env.direct()
        .await
        .batch_execute(
            "revoke execute on function pg_current_wal_flush_lsn() from public;
             revoke execute on function pg_current_wal_insert_lsn() from public;",
        )
        .await
        .unwrap();
    let replica_ports: HashSet<i32> = env.cluster.replicas.iter().map(|r| r.port as i32).collect();
    pause_all(&env);
    let (a, b) = (env.connect().await, env.connect().await);
    for k in 1..=3 {
        a.batch_execute(&format!("insert into kv values ({k}, 1)"))
            .await
            .unwrap();
        a.execute("update kv set v = 2 where k = $1", &[&k])
            .await
            .unwrap();
        for c in [&a, &b] {
            let (v, _) = read_kv(c, k, &replica_ports).await;
            assert_eq!(v, Some(2), "a stale read of key {k}");
        }
    }
    let p = port_of(&b, "select inet_server_port() from other where k = 1").await;
    assert!(
        replica_ports.contains(&p),
        "a read of an unwritten table went to {p}"
    );
    resume_all(&env);
}

/// Under a steady stream of commits the sampler reads positions at most once per
/// capture_interval_ms, commits in between share a read, and every one of them still
/// gets a position: once the writers stop, the table is read on a replica, complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_share_position_reads_at_most_one_per_interval() {
    const INTERVAL_MS: u64 = 250;
    let env = consistency_env(&format!(
        "consistency:\n  capture_interval_ms: {INTERVAL_MS}\nrouting:\n  sticky_reads: false\n"
    ))
    .await;
    let replica_ports: HashSet<i32> = env.cluster.replicas.iter().map(|r| r.port as i32).collect();
    let started = std::time::Instant::now();
    let writing_until = started + Duration::from_millis(1200);
    let next_key = Arc::new(AtomicU64::new(1));
    let mut writers = Vec::new();
    for _ in 0..4 {
        let c = env.connect().await;
        let next_key = next_key.clone();
        writers.push(tokio::spawn(async move {
            while std::time::Instant::now() < writing_until {
                let k = next_key.fetch_add(1, Ordering::Relaxed) as i32;
                c.execute("insert into kv values ($1, 1)", &[&k])
                    .await
                    .unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let written = next_key.load(Ordering::Relaxed) as i64 - 1;
    let c = env.connect().await;
    wait_for(
        "every write read back on a replica",
        Duration::from_secs(20),
        || async {
            let row = c
                .query_one("select inet_server_port(), count(*) from kv", &[])
                .await
                .unwrap();
            let count: i64 = row.get(1);
            assert!(count >= written, "a stale read: {count} of {written} rows");
            replica_ports.contains(&row.get::<_, i32>(0)).then_some(())
        },
    )
    .await;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let (_, primary) = env
        .proxy
        .shared
        .pools
        .all()
        .into_iter()
        .find(|(k, _)| k.node == "primary")
        .expect("the primary's pool");
    let reads = primary.positions.reads();
    println!("{written} commits, {reads} position reads in {elapsed_ms} ms");
    assert!(reads >= 1, "no position was read");
    assert!(
        reads <= elapsed_ms / INTERVAL_MS + 1,
        "{reads} position reads in {elapsed_ms} ms: more than one per {INTERVAL_MS} ms"
    );
    assert!(
        written >= 4 * reads as i64,
        "{written} commits for {reads} reads: commits did not share reads"
    );
}

/// capture_commits off: no commit positions, so a just-written table may be read from
/// a replica that has not replayed it (every mode acts as eventual).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_commit_capture_reads_keep_only_the_lag_budget() {
    let env = consistency_env(
        "consistency:\n  capture_commits: false\nrouting:\n  sticky_reads: false\n",
    )
    .await;
    let paused_port = env.cluster.replicas[0].port as i32;
    tokio::task::block_in_place(|| pause_replay(&env, 0));
    let c = env.connect().await;
    c.execute("insert into kv values (1, 1)", &[])
        .await
        .unwrap();
    wait_for(
        "a read of the written table on the paused replica",
        Duration::from_secs(10),
        || async {
            let row = c
                .query_one("select inet_server_port(), count(*) from kv", &[])
                .await
                .unwrap();
            (row.get::<_, i32>(0) == paused_port).then_some(row.get::<_, i64>(1))
        },
    )
    .await;
    tokio::task::block_in_place(|| resume_replay(&env, 0));
}

/// The queries the proxy runs for every commit (its position) and every replica probe
/// are prepared once per server connection, and stay correct when the statement goes
/// away behind the proxy's back or fails.
#[tokio::test]
async fn the_proxys_own_frequent_queries_are_prepared_once_per_connection() {
    use pgwarden::backend::{conn::connect, BackendError, ConnectSpec};
    use pgwarden::config::ServerTlsMode;
    let env = start(Setup::default()).await;
    let p = &env.cluster.primary;
    let mut conn = connect(&ConnectSpec {
        node: "primary".into(),
        host: p.host.clone(),
        port: p.port,
        user: "app".into(),
        password: "app".into(),
        database: "app".into(),
        tls: ServerTlsMode::Disable,
        connect_timeout: Duration::from_secs(10),
        prepared_capacity: 4,
        application_name: "pgwarden-test",
    })
    .await
    .expect("server connection");
    let count = "SELECT count(*)::text FROM pg_prepared_statements WHERE name = 'pgw_i_test'";
    let prepared = |row: Vec<Option<String>>| row[0].clone().unwrap();

    for _ in 0..3 {
        let row = conn.query_row_prepared("pgw_i_test", "SELECT 41 + 1").await;
        assert_eq!(row.unwrap(), vec![Some("42".to_string())]);
    }
    assert_eq!(prepared(conn.query_row(count).await.unwrap()), "1");

    // Gone without the proxy seeing it (run_internal does not track statements).
    conn.run_internal("DEALLOCATE ALL").await.unwrap();
    let row = conn.query_row_prepared("pgw_i_test", "SELECT 41 + 1").await;
    assert_eq!(row.unwrap(), vec![Some("42".to_string())]);
    assert_eq!(prepared(conn.query_row(count).await.unwrap()), "1");

    // A statement that fails when run keeps failing with its own error, not with
    // "already exists" from preparing it again, and leaves the connection usable.
    for _ in 0..2 {
        match conn.query_row_prepared("pgw_i_bad", "SELECT 1 / 0").await {
            Err(BackendError::Server { code, .. }) => assert_eq!(code, "22012"),
            other => panic!("division by zero expected, got {other:?}"),
        }
    }
    assert!(!conn.broken);
    let row = conn.query_row_prepared("pgw_i_test", "SELECT 41 + 1").await;
    assert_eq!(row.unwrap(), vec![Some("42".to_string())]);
}
