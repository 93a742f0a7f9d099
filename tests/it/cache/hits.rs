//! What a hit returns: exactly the bytes PostgreSQL sent; what is never kept.

use super::{cached_env, fill, hit, stats, wire_bytes};
use crate::common::{describe_all, Wire};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_is_byte_for_byte_what_the_server_sent() {
    let env = cached_env(1, "").await;
    env.direct()
        .await
        .batch_execute(
            "create table shapes (id int, t text, n numeric, b bool, x bytea, at timestamptz);
             insert into shapes values
               (1, 'héllo', 1.50, true, '\\x00ff', '2026-01-02 03:04:05+00'),
               (2, null, null, null, null, null),
               (3, '', -0.001, false, '\\x', 'infinity');
             grant select on shapes to app",
        )
        .await
        .unwrap();
    let sql = "select * from shapes order by id";
    let mut direct = Wire::connect(env.cluster.primary.port, "app", "app", "app", &[]).await;
    let want = wire_bytes(&direct.simple(sql).await);
    let mut w = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    let filled = fill(&env, &mut w, sql).await;
    assert_eq!(
        wire_bytes(&filled),
        want,
        "the fill's reply is PostgreSQL's"
    );
    let (was_hit, reply) = hit(&env, &mut w, sql).await;
    assert!(was_hit, "the second run is answered by the cache");
    assert_eq!(
        wire_bytes(&reply),
        want,
        "a hit is byte for byte PostgreSQL's reply"
    );
    assert_eq!(describe_all(&reply), "T D D D C(SELECT 3) Z(I)");

    // Another session of the same role and settings shares the entry.
    let mut other = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    let (was_hit, reply) = hit(&env, &mut other, sql).await;
    assert!(was_hit);
    assert_eq!(wire_bytes(&reply), want);
    // A setting that changes results (TimeZone) is part of the key: no hit, its own reply.
    let mut tokyo = Wire::connect(
        env.port(),
        "app",
        "app",
        "app",
        &[("TimeZone", "Asia/Tokyo")],
    )
    .await;
    let (was_hit, reply) = hit(&env, &mut tokyo, sql).await;
    assert!(
        !was_hit,
        "a session in another time zone does not get UTC's rows"
    );
    assert_ne!(wire_bytes(&reply), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_reply_is_kept_whole_and_one_over_the_limit_is_not() {
    let env = cached_env(0, "  max_entry_bytes: 300000\n").await;
    env.direct()
        .await
        .batch_execute(
            "create table big as select g, repeat(md5(g::text), 60) as pad
               from generate_series(1, 100) g;
             grant select on big to app",
        )
        .await
        .unwrap();
    let mut w = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    // About 200 KB: kept, and served whole.
    let sql = "select * from big order by g";
    let filled = fill(&env, &mut w, sql).await;
    assert!(wire_bytes(&filled).len() > 190_000);
    let (was_hit, reply) = hit(&env, &mut w, sql).await;
    assert!(was_hit);
    assert_eq!(wire_bytes(&reply), wire_bytes(&filled));
    // About 600 KB: over max_entry_bytes, so never kept; the client still gets all of it.
    let sql = "select b.* from big b, kv order by b.g, kv.k";
    for _ in 0..3 {
        let before = stats(&env);
        let (was_hit, reply) = hit(&env, &mut w, sql).await;
        assert!(!was_hit);
        assert_eq!(reply.iter().filter(|m| m.tag == b'D').count(), 300);
        assert_eq!(stats(&env).fills, before.fills);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_volatile_reads_and_opted_out_reads_are_never_kept() {
    let env = cached_env(0, "").await;
    let mut w = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    fill(&env, &mut w, "select v from kv where k = 1").await;
    let before = stats(&env);
    for _ in 0..3 {
        let r = w.simple("select 1 / (k - 1) from kv where k = 1").await;
        let e = r.iter().find(|m| m.tag == b'E').expect("division by zero");
        assert_eq!(e.sqlstate().as_deref(), Some("22012"));
    }
    let after = stats(&env);
    assert_eq!(after.fills, before.fills, "an error is never kept");
    assert!(after.refused >= before.refused + 3);

    // A transaction's reads go to its own server, never to the cache.
    w.simple("begin").await;
    let (was_hit, _) = hit(&env, &mut w, "select v from kv where k = 1").await;
    assert!(!was_hit, "inside a transaction");
    w.simple("commit").await;
    // The session can switch the cache off and on.
    w.simple("set pgwarden.cache = off").await;
    let (was_hit, _) = hit(&env, &mut w, "select v from kv where k = 1").await;
    assert!(!was_hit, "pgwarden.cache = off");
    w.simple("set pgwarden.cache = on").await;
    let (was_hit, _) = hit(&env, &mut w, "select v from kv where k = 1").await;
    assert!(was_hit, "pgwarden.cache = on again");
    let before = stats(&env).fills;
    for sql in [
        "select now(), v from kv where k = 2",
        "select random(), v from kv where k = 2",
        "select v, pg_is_in_recovery() from kv where k = 2",
        "select v from kv where k = 2 for update",
        "/* pgwarden:nocache */ select v from kv where k = 2",
    ] {
        for _ in 0..2 {
            let (was_hit, r) = hit(&env, &mut w, sql).await;
            assert!(!was_hit, "{sql}");
            assert!(r.iter().any(|m| m.tag == b'D'), "{sql}");
        }
    }
    assert_eq!(stats(&env).fills, before, "none of these was kept");
}
