//! What moves an entry out: a committed write through the proxy (never a rolled-back
//! one, never before COMMIT), TRUNCATE and DDL, a flush on the admin port, and another
//! proxy's write through the fleet bus.

use super::{cached_env, fill, fill_in, first_text, fleet_of_two, hit, post};
use crate::common::{one_row, wait_for, Wire};
use std::time::Duration;

fn text(row: &[Option<Vec<u8>>], i: usize) -> String {
    String::from_utf8(row[i].clone().expect("not NULL")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_after_a_write_sees_it_even_with_a_paused_replica() {
    let env = cached_env(1, "").await;
    env.cluster.replicas[0]
        .psql("postgres", "app", "select pg_wal_replay_pause()")
        .unwrap();
    let sql = "select v from kv where k = 1";
    let mut w = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    let mut writer = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    fill(&env, &mut w, sql).await;
    for i in 0..30 {
        writer
            .simple(&format!("update kv set v = 'n{i}' where k = 1"))
            .await;
        let (was_hit, r) = hit(&env, &mut w, sql).await;
        assert!(
            !was_hit,
            "round {i}: the entry from before the write is gone"
        );
        assert_eq!(first_text(&r), format!("n{i}"), "round {i}");
        let (was_hit, r) = hit(&env, &mut w, sql).await;
        assert!(was_hit, "round {i}: the refill is kept");
        assert_eq!(
            first_text(&r),
            format!("n{i}"),
            "round {i}: the hit is the new value"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_moves_nothing_and_a_transaction_invalidates_at_commit() {
    let env = cached_env(1, "").await;
    let sql = "select v from kv where k = 2";
    let mut r = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    let mut w = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    fill(&env, &mut r, sql).await;
    w.simple("begin").await;
    w.simple("update kv set v = 'gone' where k = 2").await;
    w.simple("rollback").await;
    let (was_hit, reply) = hit(&env, &mut r, sql).await;
    assert!(was_hit, "a rolled-back write invalidates nothing");
    assert_eq!(first_text(&reply), "v2");

    w.simple("begin").await;
    w.simple("update kv set v = 'kept' where k = 2").await;
    // Not committed yet: the old value is still the truth, cached or not.
    let row = one_row(&mut r, sql).await;
    assert_eq!(text(&row, 0), "v2");
    w.simple("commit").await;
    let (was_hit, reply) = hit(&env, &mut r, sql).await;
    assert!(!was_hit, "COMMIT invalidated the entry");
    assert_eq!(first_text(&reply), "kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_alter_table_and_a_flush_invalidate() {
    let env = cached_env(1, "").await;
    let sql = "select * from kv order by k";
    let mut r = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    let mut w = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    fill(&env, &mut r, sql).await;
    let r2 = w.simple("alter table kv add column w int default 7").await;
    assert_eq!(crate::common::describe_all(&r2), "C(ALTER TABLE) Z(I)");
    let (was_hit, reply) = hit(&env, &mut r, sql).await;
    assert!(!was_hit, "ALTER TABLE invalidated the entry");
    let row = reply.iter().find_map(|m| m.data_row()).unwrap();
    assert_eq!(row.len(), 3, "the new column is there");

    fill(&env, &mut r, sql).await;
    let r2 = w.simple("truncate kv").await;
    assert_eq!(crate::common::describe_all(&r2), "C(TRUNCATE TABLE) Z(I)");
    let (was_hit, reply) = hit(&env, &mut r, sql).await;
    assert!(!was_hit, "TRUNCATE invalidated the entry");
    assert!(
        reply.iter().all(|m| m.tag != b'D'),
        "no rows after TRUNCATE"
    );

    // A flush on the admin port, of another table, of its table, then of everything.
    let cache = env.proxy.shared.cache.clone().unwrap();
    w.simple("insert into kv values (9, 'nine')").await;
    fill(&env, &mut r, "select v from kv where k = 9").await;
    let kept = cache.entries();
    assert!(kept >= 1);
    let resp = post(&env, "/cache/flush?table=other").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(cache.entries(), kept, "a flush of another table keeps them");
    post(&env, "/cache/flush?table=KV").await;
    assert_eq!(cache.entries(), 0, "a flush of its table drops it");
    let (was_hit, _) = hit(&env, &mut r, "select v from kv where k = 9").await;
    assert!(!was_hit);
    fill(&env, &mut r, "select v from kv where k = 9").await;
    post(&env, "/cache/flush").await;
    assert_eq!(cache.entries(), 0, "a flush of everything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_proxy_invalidates_the_others_cache() {
    let (a, b, buses, mut redis) = fleet_of_two(1).await;
    a.cluster.replicas[0]
        .psql("postgres", "app", "select pg_wal_replay_pause()")
        .unwrap();
    let b_cache = b.shared.cache.clone().unwrap();
    let sql = "select v from kv where k = 3";
    let mut wa = Wire::connect(a.port(), "app", "app", "app", &[]).await;
    let mut rb = Wire::connect(b.addr.port(), "app", "app", "app", &[]).await;
    let mut heard = b.shared.table_clock.get("app", "kv");
    for i in 0..20 {
        // Proxy B keeps the current value...
        fill_in(&b_cache, &mut rb, sql).await;
        // ...proxy A takes a write...
        wa.simple(&format!("update kv set v = 'b{i}' where k = 3"))
            .await;
        // ...B hears of it on the bus (a read racing that message may still be served
        // the old entry: see docs/cache.md, "In a fleet")...
        wait_for(
            "proxy B to hear of the write",
            Duration::from_secs(10),
            || async { (b.shared.table_clock.get("app", "kv") > heard).then_some(()) },
        )
        .await;
        heard = b.shared.table_clock.get("app", "kv");
        // ...and B's next read has it.
        let row = one_row(&mut rb, sql).await;
        assert_eq!(text(&row, 0), format!("b{i}"), "round {i}");
    }
    assert!(
        b_cache.stats().invalidated >= 20,
        "B dropped its entries as A wrote"
    );

    // The bus goes down: B's cache serves nothing, it may have missed an invalidation.
    tokio::task::block_in_place(|| redis.stop());
    wait_for("B to notice", Duration::from_secs(10), || async {
        (!buses[1].is_connected()).then_some(())
    })
    .await;
    let hits = b_cache.stats().hits;
    for _ in 0..3 {
        one_row(&mut rb, sql).await;
    }
    assert_eq!(b_cache.stats().hits, hits, "no hit while the bus is down");
    // It comes back: entries from before are not trusted, new fills are.
    tokio::task::block_in_place(|| redis.restart()).unwrap();
    wait_for("the bus to reconnect", Duration::from_secs(15), || async {
        buses.iter().all(|b| b.is_connected()).then_some(())
    })
    .await;
    let invalidated = b_cache.stats().invalidated;
    let (hits, fills) = (b_cache.stats().hits, b_cache.stats().fills);
    let row = one_row(&mut rb, sql).await;
    assert_eq!(text(&row, 0), "b19");
    let after = b_cache.stats();
    assert_eq!(
        after.hits, hits,
        "the entry from before the outage is not served"
    );
    assert!(after.invalidated > invalidated || after.fills > fills);
    fill_in(&b_cache, &mut rb, sql).await;
    let (was_hit, _) = (b_cache.stats().hits, ());
    one_row(&mut rb, sql).await;
    assert!(b_cache.stats().hits > was_hit, "B caches again");
}
