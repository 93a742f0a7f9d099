//! Reads racing writes through two proxies of a fleet, a replica paused: every read is
//! compared with the value committed before it began.

use super::{caught_up, fleet_of_two};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

const ROWS: i32 = 3;
const WRITES_PER_WRITER: usize = 150;
const MIN_READS: u64 = 600;

/// The first column of the one row a simple query returned.
fn first_i64(rows: &[tokio_postgres::SimpleQueryMessage]) -> i64 {
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse().unwrap()),
            _ => None,
        })
        .expect("a row")
}

async fn client(port: u16) -> tokio_postgres::Client {
    let dsn = format!("postgres://app:app@127.0.0.1:{port}/app?sslmode=disable");
    let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_racing_writes_through_two_proxies_are_never_stale() {
    let (a, b, _buses, _redis) = fleet_of_two(2).await;
    a.direct()
        .await
        .batch_execute(&format!(
            "create table hot (k int primary key, n bigint);
             insert into hot select g, 0 from generate_series(1, {ROWS}) g;
             grant all on hot to app"
        ))
        .await
        .unwrap();
    caught_up(&a).await;
    a.cluster.replicas[0]
        .psql("postgres", "app", "select pg_wal_replay_pause()")
        .unwrap();
    // committed[k]: the highest n whose UPDATE has been acknowledged.
    let committed: Arc<Vec<AtomicI64>> = Arc::new((0..ROWS).map(|_| AtomicI64::new(0)).collect());
    let (reads, stale) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let ports = [a.port(), b.addr.port()];
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..2usize {
        let committed = committed.clone();
        let port = ports[w % 2];
        writers.push(tokio::spawn(async move {
            let c = client(port).await;
            for i in 0..WRITES_PER_WRITER {
                let k = ((i + w) % ROWS as usize) as i32 + 1;
                let sql = format!("update hot set n = n + 1 where k = {k} returning n");
                let rows = c.simple_query(&sql).await.unwrap();
                let n = first_i64(&rows);
                committed[k as usize - 1].fetch_max(n, Ordering::SeqCst);
            }
        }));
    }
    let mut readers = Vec::new();
    for r in 0..4usize {
        let (committed, reads, stale, done) = (
            committed.clone(),
            reads.clone(),
            stale.clone(),
            done.clone(),
        );
        let port = ports[r % 2];
        readers.push(tokio::spawn(async move {
            let c = client(port).await;
            let mut i = r;
            // Until the writers are done and enough reads were checked (a fleet read
            // waits for a Redis round trip, so how many fit in the writes varies).
            while !done.load(Ordering::SeqCst) || reads.load(Ordering::Relaxed) < MIN_READS {
                let k = (i % ROWS as usize) as i32 + 1;
                i += 1;
                let floor = committed[k as usize - 1].load(Ordering::SeqCst);
                let rows = c
                    .simple_query(&format!("select n from hot where k = {k}"))
                    .await
                    .unwrap();
                let n = first_i64(&rows);
                reads.fetch_add(1, Ordering::Relaxed);
                if n < floor {
                    stale.fetch_add(1, Ordering::Relaxed);
                    eprintln!("stale: k={k} read {n}, {floor} was committed before the read");
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    for r in readers {
        r.await.unwrap();
    }
    let hits = a.proxy.shared.cache.as_ref().unwrap().stats().hits
        + b.shared.cache.as_ref().unwrap().stats().hits;
    let reads = reads.load(Ordering::Relaxed);
    println!(
        "{reads} reads, {hits} answered by a cache, {} writes",
        2 * WRITES_PER_WRITER
    );
    assert_eq!(stale.load(Ordering::Relaxed), 0, "stale reads of {reads}");
    assert!(hits > 0, "some reads were answered by a cache");
    assert!(
        reads >= MIN_READS,
        "enough reads to mean something: {reads}"
    );
}
