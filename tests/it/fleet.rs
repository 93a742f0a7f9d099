//! A fleet of proxies sharing the table clock through a real redis-server, and the
//! nearest-replica preference through a delaying relay.

use crate::common::wait_for;
use pgwarden::config;
use pgwarden::sandbox::delay_relay::DelayRelay;
use pgwarden::sandbox::redis::RedisServer;
use pgwarden::sandbox::{free_port, proxy_config_yaml, ClusterOptions, PgCluster};
use pgwarden::Proxy;
use std::collections::HashSet;
use std::time::Duration;

async fn cluster() -> PgCluster {
    let c = tokio::task::spawn_blocking(|| {
        PgCluster::start(ClusterOptions {
            replicas: 2,
            ..Default::default()
        })
    })
    .await
    .unwrap()
    .unwrap();
    let direct = connect(&c.primary.dsn("postgres", "", "app")).await;
    direct
        .batch_execute("create table kv (k int primary key, v int); grant all on kv to app")
        .await
        .unwrap();
    c
}

async fn connect(dsn: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c
}

async fn proxy(cluster: &PgCluster, extra: &str) -> Proxy {
    let yaml = proxy_config_yaml(cluster, free_port(), None, "transaction") + extra;
    Proxy::start(config::load_str(&yaml).unwrap(), None)
        .await
        .unwrap()
}

fn dsn(p: &Proxy) -> String {
    format!("postgres://app:app@{}/app", p.addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_proxy_is_never_read_stale_through_another() {
    let cluster = cluster().await;
    let mut redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap()
        .unwrap();
    let fleet = format!("consistency:\n  fleet_redis_url: {}\n", redis.url());
    let (a, b) = (proxy(&cluster, &fleet).await, proxy(&cluster, &fleet).await);
    wait_for(
        "both proxies on the bus",
        Duration::from_secs(10),
        || async {
            (a.shared.bus.as_ref().unwrap().is_connected()
                && b.shared.bus.as_ref().unwrap().is_connected())
            .then_some(())
        },
    )
    .await;
    cluster.replicas[0]
        .psql("postgres", "app", "select pg_wal_replay_pause()")
        .unwrap();
    let (wa, rb) = (connect(&dsn(&a)).await, connect(&dsn(&b)).await);
    let mut replica_reads = 0;
    for k in 0..40i32 {
        wa.execute("insert into kv values ($1, $1)", &[&k])
            .await
            .unwrap();
        let row = rb
            .query_one(
                "select (select v from kv where k = $1), pg_is_in_recovery()",
                &[&k],
            )
            .await
            .unwrap();
        assert_eq!(
            row.get::<_, Option<i32>>(0),
            Some(k),
            "proxy B served a stale read of key {k}"
        );
        if row.get::<_, bool>(1) {
            replica_reads += 1;
        }
    }
    println!("reads through proxy B served by a replica: {replica_reads}/40");

    // Redis goes away: both proxies keep serving, with their own clocks.
    tokio::task::block_in_place(|| redis.stop());
    wait_for("the bus to notice", Duration::from_secs(10), || async {
        (!a.shared.bus.as_ref().unwrap().is_connected()).then_some(())
    })
    .await;
    for k in 100..110i32 {
        wa.execute("insert into kv values ($1, $1)", &[&k])
            .await
            .unwrap();
        let v: Option<i32> = rb
            .query_one("select (select v from kv where k = $1)", &[&k])
            .await
            .unwrap()
            .get(0);
        // Without the bus B may read older data, but it must not fail.
        let _ = v;
    }
    // Redis comes back: the bus resumes and B learns A's next write.
    tokio::task::block_in_place(|| redis.restart()).unwrap();
    wait_for("the bus to reconnect", Duration::from_secs(15), || async {
        (a.shared.bus.as_ref().unwrap().is_connected()
            && b.shared.bus.as_ref().unwrap().is_connected())
        .then_some(())
    })
    .await;
    let before = b.shared.table_clock.get("app", "kv");
    wa.execute("insert into kv values (500, 500)", &[])
        .await
        .unwrap();
    wait_for(
        "proxy B's clock to move",
        Duration::from_secs(10),
        || async { (b.shared.table_clock.get("app", "kv") > before).then_some(()) },
    )
    .await;
    cluster.replicas[0]
        .psql("postgres", "app", "select pg_wal_replay_resume()")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nearest_replica_is_preferred() {
    let cluster = cluster().await;
    let far = cluster.replicas[0].port;
    let relay = DelayRelay::start(
        format!("127.0.0.1:{far}").parse().unwrap(),
        Duration::from_millis(20),
    )
    .unwrap();
    // replica1 is reached through the relay, ~40 ms round trip away. Reads are chosen
    // per request, so one client shows both replicas once they are equally near.
    let yaml = proxy_config_yaml(&cluster, free_port(), None, "transaction").replace(
        &format!("port: {far}, role: replica"),
        &format!("port: {}, role: replica", relay.addr().port()),
    ) + "routing:\n  sticky_reads: false\n";
    let p = Proxy::start(config::load_str(&yaml).unwrap(), None)
        .await
        .unwrap();
    let c = connect(&dsn(&p)).await;
    let near = cluster.replicas[1].port as i32;
    wait_for(
        "the monitor to measure both replicas",
        Duration::from_secs(10),
        || async {
            let t = p.shared.topology.load();
            t.nodes.iter().all(|n| n.runtime.rtt_us() > 0).then_some(())
        },
    )
    .await;
    for _ in 0..20 {
        let v: i32 = c
            .query_one("select inet_server_port()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(v, near, "a read went to the far replica");
    }
    relay.set_delay(Duration::ZERO);
    wait_for(
        "both replicas to serve once the delay is gone",
        Duration::from_secs(20),
        || async {
            let mut seen = HashSet::new();
            for _ in 0..10 {
                seen.insert(
                    c.query_one("select inet_server_port()", &[])
                        .await
                        .unwrap()
                        .get::<_, i32>(0),
                );
            }
            (seen.len() == 2).then_some(())
        },
    )
    .await;
}
