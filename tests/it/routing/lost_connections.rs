//! Servers and server connections lost under a client's request: a replica stopped
//! mid-run or while its connection idles, and connections cut (with `Cutter`) just as
//! the proxy sends on them. The client sees no error.

use super::*;
use crate::common::cutter::Cutter;
use crate::common::{self, start, wait_for};
use pgwarden::config::{MultiplexReads, Role};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopped_mid_run_costs_readers_nothing() {
    let env = start(Setup {
        replicas: 2,
        extra_yaml: "health:\n  timeout_ms: 500\n  ban_ms: 1000\n".into(),
        ..Default::default()
    })
    .await;
    let down = env.cluster.replicas[0].clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let c = env.connect().await;
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let v: i32 = c
                    .query_one("select $1::int", &[&7i32])
                    .await
                    .expect("read through proxy")
                    .get(0);
                assert_eq!(v, 7);
                c.simple_query("select 1")
                    .await
                    .expect("simple read through proxy");
                n += 1;
            }
            n
        }));
    }
    // Let traffic flow, stop a replica under it, and keep reading.
    let c = env.connect().await;
    wait_for(
        "reads on the first replica",
        Duration::from_secs(10),
        || async {
            (port_of(&c, "select inet_server_port()").await == down.port as i32).then_some(())
        },
    )
    .await;
    tokio::task::block_in_place(|| down.stop());
    let survivor = env.cluster.replicas[1].port as i32;
    for _ in 0..20 {
        assert_eq!(port_of(&c, "select inet_server_port()").await, survivor);
    }
    tokio::task::block_in_place(|| down.start()).unwrap();
    wait_for(
        "the restarted replica to serve reads again",
        Duration::from_secs(30),
        || async {
            (port_of(&c, "select inet_server_port()").await == down.port as i32).then_some(())
        },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for r in readers {
        total += r.await.expect("reader saw no error");
    }
    assert!(total > 0);
}

/// A replica stops while its connection idles in the pool, before any health check or
/// lag sample notices: the next read, from a client whose parameters need a SET on that
/// connection, goes to the primary instead of failing. (The pool finds this connection
/// dead at checkout; for a connection dropped just after, as the SET goes out, see
/// `a_replica_connection_dropped_as_its_set_goes_out_keeps_the_read_on_the_replica`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopped_while_its_connection_idles_costs_the_next_read_nothing() {
    let env = routing_env_with(Setup {
        replicas: 1,
        // The pooled path (no lanes), and no health check or lag sample that would ban
        // the stopped replica before the read reaches its dead connection.
        tweak: |cfg| {
            cfg.pool.multiplex_reads = MultiplexReads::Off;
            cfg.consistency.lag_interval_ms = 600_000;
        },
        ..Default::default()
    })
    .await;
    let replica = env.cluster.replicas[0].clone();
    let a = env.connect().await;
    assert_eq!(
        port_of(&a, "select inet_server_port(), count(*) from items").await,
        replica.port as i32
    );
    tokio::task::block_in_place(|| replica.stop());
    let b = connect_with_other_params(&env).await;
    assert_eq!(
        port_of(&b, "select inet_server_port(), count(*) from items").await,
        primary_port(&env)
    );
}

/// Starts the routing environment with `node`'s connections from the proxy (pools and
/// monitor) going through a `Cutter`, and lag samples effectively off, so nothing but
/// the client's request sends on them while the test arranges the cut. `multiplex`: Off
/// for the pooled path, Always for shared read lanes.
async fn env_with_cutter(replicas: usize, node: Role, multiplex: MultiplexReads) -> (Env, Cutter) {
    let mut cutter = None;
    let env = routing_env_edited(
        Setup {
            replicas,
            tweak: |cfg| cfg.consistency.lag_interval_ms = 600_000,
            ..Default::default()
        },
        |cfg, cluster| {
            cfg.pool.multiplex_reads = multiplex;
            let target = match node {
                Role::Primary => &cluster.primary,
                Role::Replica => &cluster.replicas[0],
            };
            let c = Cutter::start(target.port);
            let n = cfg.nodes.iter_mut().find(|n| n.role == node).unwrap();
            n.port = c.port;
            cutter = Some(c);
        },
    )
    .await;
    (env, cutter.unwrap())
}

/// A client whose startup parameters differ from those the pooled connection was last
/// used with, so its request first needs a SET there.
async fn connect_with_other_params(env: &Env) -> tokio_postgres::Client {
    let dsn = env.dsn("app", "app", "app") + "&application_name=other";
    let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c
}

/// The primary drops a pooled connection after the pool's idle check passed it, just as
/// the SET bringing it to the next client's parameters goes out. The primary has no
/// other node to send the write to: it runs on another connection, and the client never
/// hears of the drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_connection_dropped_as_its_set_goes_out_costs_the_write_nothing() {
    let (env, cutter) = env_with_cutter(0, Role::Primary, MultiplexReads::Off).await;
    let a = env.connect().await;
    // A read (no commit position to capture in the background): one pooled connection,
    // at a's parameters.
    assert_eq!(
        port_of(&a, "select inet_server_port(), count(*) from items").await,
        primary_port(&env)
    );
    cutter.cut_open_connections_on_next_send();
    let b = connect_with_other_params(&env).await;
    b.simple_query("insert into items values (101, 'b')")
        .await
        .expect("the write runs on another connection");
    assert!(cutter.cut() >= 1, "the pooled connection was not cut");
    let v: String = env
        .direct()
        .await
        .query_one("select v from items where id = 101", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "b");
    let name = b.query_one("show application_name", &[]).await.unwrap();
    assert_eq!(name.get::<_, String>(0), "other");
}

/// The same drop on a replica: the read stays on the replica, on another connection,
/// rather than the replica being banned and the read sent to the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_connection_dropped_as_its_set_goes_out_keeps_the_read_on_the_replica() {
    let (env, cutter) = env_with_cutter(1, Role::Replica, MultiplexReads::Off).await;
    let replica = env.cluster.replicas[0].port as i32;
    let a = env.connect().await;
    let sql = "select inet_server_port(), count(*) from items";
    assert_eq!(port_of(&a, sql).await, replica);
    cutter.cut_open_connections_on_next_send();
    let b = connect_with_other_params(&env).await;
    assert_eq!(port_of(&b, sql).await, replica);
    assert!(cutter.cut() >= 1, "the pooled connection was not cut");
    // Not banned: later reads stay there too.
    for _ in 0..5 {
        assert_eq!(port_of(&a, sql).await, replica);
    }
}

/// A pooled replica connection dropped as the read itself goes out (no SET first),
/// before any reply: one dead connection says nothing of the node, so the read runs again
/// there on a new connection, the client sees no error, and the replica is not banned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_pooled_replica_connection_drops_as_it_goes_out_stays_on_the_replica() {
    let (env, cutter) = env_with_cutter(1, Role::Replica, MultiplexReads::Off).await;
    let a = env.connect().await;
    let sql = "select inet_server_port(), count(*) from items";
    let replica = env.cluster.replicas[0].port as i32;
    assert_eq!(port_of(&a, sql).await, replica);
    cutter.cut_open_connections_on_next_send();
    assert_eq!(port_of(&a, sql).await, replica);
    assert_eq!(cutter.cut(), 1, "the pooled connection was not cut");
    for _ in 0..5 {
        assert_eq!(port_of(&a, sql).await, replica);
    }
}

/// Two pooled connections of a replica lost in a row under one read: the second loss
/// counts against the node, which is banned, and the read is answered by the primary
/// without an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_loses_two_replica_connections_is_answered_elsewhere() {
    let (env, cutter) = env_with_cutter(1, Role::Replica, MultiplexReads::Off).await;
    let replica = env.cluster.replicas[0].port as i32;
    // Two reads at once leave two connections in the replica's pool.
    let slow = "select inet_server_port() from (select pg_sleep(0.3)) s";
    let (a, b) = (env.connect().await, env.connect().await);
    let (pa, pb) = tokio::join!(port_of(&a, slow), port_of(&b, slow));
    assert_eq!((pa, pb), (replica, replica));
    cutter.cut_open_connections_on_next_send();
    let sql = "select inet_server_port(), count(*) from items";
    assert_eq!(port_of(&a, sql).await, primary_port(&env));
    assert_eq!(
        cutter.cut(),
        2,
        "both pooled connections were tried and cut"
    );
    // Banned (health.ban_ms): the next read goes to the primary too.
    assert_eq!(port_of(&b, sql).await, primary_port(&env));
}

/// The same on a shared read lane: the lane's connection is cut as it writes a read, and
/// the read is answered without an error (the lane hands it back to the usual path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_lane_connection_drops_as_it_goes_out_is_answered_elsewhere() {
    let (env, cutter) = env_with_cutter(1, Role::Replica, MultiplexReads::Always).await;
    common::wait_for_a_replica_lag_sample(&env).await;
    let a = env.connect().await;
    // A lane takes a plain read with a literal to lift (a function call such as
    // inet_server_port() keeps a read off lanes, so the answer's node is not asked).
    let read = || async {
        let row = a
            .query_one("select v from items where id = 3", &[])
            .await
            .expect("the read is answered");
        row.get::<_, String>(0)
    };
    assert_eq!(read().await, "v3");
    let lanes = &env.proxy.shared.lanes;
    assert_eq!(lanes.served(), 1, "the first read did not take a lane");
    cutter.cut_open_connections_on_next_send();
    assert_eq!(read().await, "v3");
    assert!(cutter.cut() >= 1, "the lane's connection was not cut");
    // Later reads take a lane again, on a connection of its own.
    for _ in 0..3 {
        assert_eq!(read().await, "v3");
    }
    assert!(lanes.served() >= 2, "no read took a lane after the cut");
}
