//! A write another proxy of the fleet has acknowledged, whose bus message has not reached
//! this proxy yet: its clock hash in Redis already has it (the other proxy held its
//! client's reply until then), so neither the cache nor the routing may miss it. The
//! test writes directly on the primary and stores the clock as that proxy would, and
//! never publishes the message.

use super::{cached_env, fill, first_text as value};
use crate::common::{wait_for, Wire};
use pgwarden::sandbox::redis::RedisServer;
use std::time::Duration;

/// A write that bypasses this proxy, then the clock another proxy's commit of it would
/// store in Redis before its client's reply (kv's field at the primary's position).
async fn write_as_another_proxy(direct: &tokio_postgres::Client, url: &str, sql: &str) {
    direct.batch_execute(sql).await.unwrap();
    let lsn: String = direct
        .query_one("select pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    store_clock(url, "kv", &lsn).await;
}

async fn store_clock(url: &str, table: &str, lsn: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("HSET")
        .arg("pgwarden:clock:app")
        .arg(table)
        .arg(lsn)
        .exec_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_stored_in_the_fleet_clock_is_seen_before_its_message() {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap()
        .unwrap();
    let fleet = format!("consistency:\n  fleet_redis_url: {}\n", redis.url());
    let env = cached_env(2, &fleet).await;
    let bus = env.proxy.shared.bus.clone().unwrap();
    wait_for("the bus", Duration::from_secs(10), || async {
        bus.is_connected().then_some(())
    })
    .await;
    for r in &env.cluster.replicas {
        r.psql("postgres", "app", "select pg_wal_replay_pause()")
            .unwrap();
    }
    let mut w = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    let cached = "select v from kv where k = 1";
    assert_eq!(value(&fill(&env, &mut w, cached).await), "v1");
    let direct = env.direct().await;

    // The cache: the kept entry predates the write.
    let url = redis.url();
    write_as_another_proxy(&direct, &url, "update kv set v = 'new1' where k = 1").await;
    let hits = env.proxy.shared.cache.as_ref().unwrap().stats().hits;
    assert_eq!(value(&w.simple(cached).await), "new1", "not the old entry");
    assert_eq!(
        env.proxy.shared.cache.as_ref().unwrap().stats().hits,
        hits,
        "the old entry was not served"
    );

    // The routing: both replicas are paused before the write, so only the primary has it.
    write_as_another_proxy(&direct, &url, "update kv set v = 'new2' where k = 2").await;
    let uncached = "/* pgwarden:nocache */ select v from kv where k = 2";
    assert_eq!(value(&w.simple(uncached).await), "new2", "not a replica's");
    for r in &env.cluster.replicas {
        r.psql("postgres", "app", "select pg_wal_replay_resume()")
            .unwrap();
    }
}
