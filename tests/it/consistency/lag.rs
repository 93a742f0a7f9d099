//! Consistency modes (strict and session keep read-your-writes, eventual only the lag
//! budget) and the lag budget itself, with replay LSNs and with the Aurora lag source
//! (time-based).

use super::*;
use crate::common::wait_for;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_and_eventual_mode() {
    let env = consistency_env("").await;
    let paused_port = env.cluster.replicas[0].port as i32;
    tokio::task::block_in_place(|| pause_replay(&env, 0));
    let c = env.connect().await;
    c.execute("insert into kv values (1, 1)", &[])
        .await
        .unwrap();
    // Read-your-writes holds in strict and session mode: never the paused replica.
    for mode in ["strict", "session"] {
        c.batch_execute(&format!("set pgwarden.consistency = {mode}"))
            .await
            .unwrap();
        for _ in 0..10 {
            let row = c
                .query_one(
                    "select inet_server_port(), (select v from kv where k = 1)",
                    &[],
                )
                .await
                .unwrap();
            assert_ne!(row.get::<_, i32>(0), paused_port, "{mode}");
            assert_eq!(row.get::<_, Option<i32>>(1), Some(1), "{mode}");
        }
    }
    // Eventual mode only keeps the lag budget: the paused replica serves again.
    c.batch_execute("set pgwarden.consistency = eventual")
        .await
        .unwrap();
    wait_for(
        "a read on the paused replica in eventual mode",
        Duration::from_secs(10),
        || async { (port_of(&c, "select inet_server_port()").await == paused_port).then_some(()) },
    )
    .await;
    tokio::task::block_in_place(|| resume_replay(&env, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_over_the_lag_budget_gets_no_reads_until_it_catches_up() {
    let env = consistency_env("consistency:\n  max_lag_bytes: 1048576\n").await;
    let lagging = env.cluster.replicas[0].port as i32;
    let c = env.connect().await;
    tokio::task::block_in_place(|| pause_replay(&env, 0));
    // About 8 MB of WAL the paused replica will not replay.
    env.direct()
        .await
        .batch_execute("create table filler as select g, repeat('x', 200) pad from generate_series(1, 30000) g")
        .await
        .unwrap();
    // Once the monitor has seen the lag, the replica is out of the read set.
    wait_for(
        "the monitor to see the lag",
        Duration::from_secs(10),
        || async {
            let mut ports = HashSet::new();
            for _ in 0..10 {
                ports.insert(port_of(&c, "select inet_server_port()").await);
            }
            (!ports.contains(&lagging)).then_some(())
        },
    )
    .await;
    for _ in 0..30 {
        assert_ne!(port_of(&c, "select inet_server_port()").await, lagging);
    }
    tokio::task::block_in_place(|| resume_replay(&env, 0));
    for _ in 0..20 {
        let topo = env.proxy.shared.topology.load();
        for n in &topo.nodes {
            eprintln!(
                "{} {:?} banned={} rtt={}",
                n.name,
                n.runtime.lag(),
                n.runtime.is_banned(topo.now_ms()),
                n.runtime.rtt_us()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_for(
        "the caught-up replica to serve reads again",
        Duration::from_secs(30),
        || async { (port_of(&c, "select inet_server_port()").await == lagging).then_some(()) },
    )
    .await;
}

/// A stand-in for Aurora's aurora_replica_status(), driven by a table the test controls.
const AURORA_STAND_IN: &str = "
create table aurora_lag (server_id text primary key, lag_ms float8);
create function aurora_replica_status()
  returns table (server_id text, session_id text, replica_lag_in_msec float8, last_update_timestamp timestamptz)
  language sql stable as $$
    select l.server_id, 'session-' || l.server_id, l.lag_ms, now() from aurora_lag l
  $$;
grant all on aurora_lag to app;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aurora_lag_source_applies_the_rule_on_time() {
    let env = consistency_env(
        "consistency:\n  lag_source: aurora\n  max_lag_ms: 30000\nmonitor:\n  database: app\n",
    )
    .await;
    let direct = env.direct().await;
    direct.batch_execute(AURORA_STAND_IN).await.unwrap();
    let (r1, r2) = (
        env.cluster.replicas[0].port as i32,
        env.cluster.replicas[1].port as i32,
    );
    // Node names double as Aurora server ids. replica2's 200 ms is an honest upper
    // bound of its real streaming lag here: the rule trusts what Aurora reports.
    direct
        .batch_execute("insert into aurora_lag values ('replica1', 60000), ('replica2', 200)")
        .await
        .unwrap();
    let c = env.connect().await;
    // replica1 is a minute behind: over max_lag_ms, it gets nothing.
    wait_for(
        "aurora lag to be applied",
        Duration::from_secs(10),
        || async {
            let mut ports = HashSet::new();
            for _ in 0..10 {
                ports.insert(port_of(&c, "select inet_server_port()").await);
            }
            (ports == HashSet::from([r2])).then_some(())
        },
    )
    .await;
    // 5 s behind: within budget for reads that need nothing new...
    direct
        .batch_execute("update aurora_lag set lag_ms = 5000 where server_id = 'replica1'")
        .await
        .unwrap();
    wait_for(
        "replica1 back within budget",
        Duration::from_secs(10),
        || async { (port_of(&c, "select inet_server_port()").await == r1).then_some(()) },
    )
    .await;
    // ...but not for a read of what this session just wrote: its time is not reached.
    // Right after the write only the primary is sure to have it (replica2's reported
    // time is up to one sample old); once replica2's time passes the commit it serves.
    c.execute("insert into kv values (7, 7)", &[])
        .await
        .unwrap();
    let mut on_r2 = false;
    for _ in 0..100 {
        let p = port_of(&c, "select inet_server_port() from kv where k = 7").await;
        assert_ne!(
            p, r1,
            "a replica 5 s behind served a read of a write made just now"
        );
        on_r2 |= p == r2;
        if on_r2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        on_r2,
        "replica2 never became eligible for the written table"
    );
}
