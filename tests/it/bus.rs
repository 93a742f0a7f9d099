//! The fleet bus against a real redis-server: writes flow between proxies, a late proxy
//! catches up from the stored clock, the stored clock only moves forward, and an outage
//! degrades to the local clock and heals. Also the delaying TCP relay of the harness.

use pgwarden::consistency::bus::{FleetBus, TableWrite};
use pgwarden::consistency::{lsn, TableClock};
use pgwarden::sandbox::{DelayRelay, RedisServer};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

const DEADLINE: Duration = Duration::from_secs(10);
const PREFIX: &str = "pgwtest";

/// Polls `cond` until it holds; panics with `what` after the deadline.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn write(db: &str, tables: &[&str], lsn: u64) -> TableWrite {
    TableWrite {
        db: db.into(),
        tables: tables.iter().map(|t| t.to_string()).collect(),
        lsn,
    }
}

struct Proxy {
    bus: Arc<FleetBus>,
    clock: Arc<TableClock>,
}

fn proxy(url: &str, shutdown: &watch::Receiver<bool>) -> Proxy {
    let clock = Arc::new(TableClock::default());
    let bus = FleetBus::start(url, PREFIX, clock.clone(), shutdown.clone());
    Proxy { bus, clock }
}

async fn connected(p: &Proxy) {
    let bus = p.bus.clone();
    wait_until("bus connected", move || bus.is_connected()).await;
}

/// Starting and stopping redis-server blocks; keep it off the runtime's hands.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

async fn stored(url: &str, db: &str, table: &str) -> Option<String> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("HGET")
        .arg(format!("{PREFIX}:clock:{db}"))
        .arg(table)
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_proxy_reaches_the_other() {
    let server = blocking(RedisServer::start).unwrap();
    let (_stop, shutdown) = watch::channel(false);
    let a = proxy(&server.url(), &shutdown);
    let b = proxy(&server.url(), &shutdown);
    connected(&a).await;
    connected(&b).await;

    let lsn = lsn::parse("1/10").unwrap();
    a.bus.publish(write("app", &["Orders", "items"], lsn));
    let clock = b.clock.clone();
    wait_until("B sees A's write", move || {
        clock.get("app", "orders") == lsn && clock.get("app", "items") == lsn
    })
    .await;
    assert_eq!(b.clock.get("other_db", "orders"), 0);
    // Stored for late joiners, case folded like the clock does.
    assert_eq!(
        stored(&server.url(), "app", "orders").await.as_deref(),
        Some("1/10")
    );

    // And the other way round, acknowledged.
    b.bus
        .publish_and_wait(write("app", &["users"], 0x20), DEADLINE)
        .await
        .unwrap();
    let clock = a.clock.clone();
    wait_until("A sees B's write", move || {
        clock.get("app", "users") == 0x20
    })
    .await;
    assert_eq!(a.bus.dropped(), 0);
    assert_eq!(b.bus.dropped(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_started_later_loads_the_stored_clock() {
    let server = blocking(RedisServer::start).unwrap();
    let (_stop, shutdown) = watch::channel(false);
    let a = proxy(&server.url(), &shutdown);
    connected(&a).await;
    for (db, table, lsn) in [("app", "t1", 100), ("app", "t2", 200), ("crm", "t1", 300)] {
        a.bus
            .publish_and_wait(write(db, &[table], lsn), DEADLINE)
            .await
            .unwrap();
    }

    let late = proxy(&server.url(), &shutdown);
    connected(&late).await;
    // Connected means the stored clock was loaded first.
    assert_eq!(late.clock.get("app", "t1"), 100);
    assert_eq!(late.clock.get("app", "t2"), 200);
    assert_eq!(late.clock.get("crm", "t1"), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clock_never_moves_back() {
    let server = blocking(RedisServer::start).unwrap();
    let (_stop, shutdown) = watch::channel(false);
    let a = proxy(&server.url(), &shutdown);
    let b = proxy(&server.url(), &shutdown);
    connected(&a).await;
    connected(&b).await;

    let high = lsn::parse("2/0").unwrap();
    let low = lsn::parse("1/FFFFFFFF").unwrap();
    a.bus
        .publish_and_wait(write("app", &["t"], high), DEADLINE)
        .await
        .unwrap();
    a.bus
        .publish_and_wait(write("app", &["t"], low), DEADLINE)
        .await
        .unwrap();
    // Messages of one publisher arrive in order: once the marker is in, so is the low write.
    a.bus
        .publish_and_wait(write("app", &["marker"], 1), DEADLINE)
        .await
        .unwrap();
    let clock = b.clock.clone();
    wait_until("B sees the marker", move || clock.get("app", "marker") == 1).await;
    assert_eq!(b.clock.get("app", "t"), high);
    assert_eq!(
        stored(&server.url(), "app", "t").await.as_deref(),
        Some("2/0")
    );

    let late = proxy(&server.url(), &shutdown);
    connected(&late).await;
    assert_eq!(late.clock.get("app", "t"), high);

    // The clock's "primary only" marker is no position: stored, it could never be undone.
    let marker = write("app", &["t"], u64::MAX);
    assert!(a.bus.publish_and_wait(marker, DEADLINE).await.is_err());
    assert_eq!(
        stored(&server.url(), "app", "t").await.as_deref(),
        Some("2/0")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_degrades_to_the_local_clock_and_heals() {
    let mut server = blocking(RedisServer::start).unwrap();
    let url = server.url();
    let (_stop, shutdown) = watch::channel(false);
    let a = proxy(&url, &shutdown);
    let b = proxy(&url, &shutdown);
    connected(&a).await;
    connected(&b).await;

    blocking(|| server.stop());
    let bus = a.bus.clone();
    wait_until("A notices the outage", move || !bus.is_connected()).await;
    let bus = b.bus.clone();
    wait_until("B notices the outage", move || !bus.is_connected()).await;

    // Far more writes than the queue holds: none may block, all are dropped and counted.
    let started = Instant::now();
    for i in 0..10_000 {
        a.bus.publish(write("app", &["t"], i));
    }
    println!("10000 publishes while down took {:?}", started.elapsed());
    assert!(a.bus.dropped() >= 10_000);
    let err = tokio::time::timeout(
        Duration::from_secs(5),
        a.bus
            .publish_and_wait(write("app", &["t"], 1), Duration::from_secs(60)),
    )
    .await
    .expect("publish_and_wait returns at once when Redis is down");
    assert!(err.is_err());

    blocking(|| server.restart()).unwrap();
    connected(&a).await;
    connected(&b).await;
    let lsn = lsn::parse("5/0").unwrap();
    a.bus.publish(write("app", &["after"], lsn));
    let clock = b.clock.clone();
    wait_until("B sees a write after the restart", move || {
        clock.get("app", "after") == lsn
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_catches_up_with_the_stored_clock_before_the_message() {
    let mut server = blocking(RedisServer::start).unwrap();
    let (_stop, shutdown) = watch::channel(false);
    let a = proxy(&server.url(), &shutdown);
    connected(&a).await;
    a.clock.advance("app", ["t"], lsn::parse("1/0").unwrap());
    // Stored as another proxy's commit stores it; no message is ever published.
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("HSET")
        .arg(format!("{PREFIX}:clock:app"))
        .arg("t")
        .arg("0/5")
        .arg("u")
        .arg("2/0")
        .arg("odd")
        .arg("not an lsn")
        .exec_async(&mut conn)
        .await
        .unwrap();
    let stamp = a.clock.stamp();
    let moved = a.bus.catch_up("app", Some(&["t", "odd"])).await.unwrap();
    assert!(!moved, "t is further here, and an odd value is skipped");
    assert!(a.clock.unchanged_since("app", ["t"], stamp));
    assert!(a.bus.catch_up("app", Some(&["u", "v"])).await.unwrap());
    assert_eq!(a.clock.get("app", "u"), lsn::parse("2/0").unwrap());
    assert!(!a.clock.unchanged_since("app", ["u"], stamp), "u moved");
    redis::cmd("HSET")
        .arg(format!("{PREFIX}:clock:app"))
        .arg("w")
        .arg("3/0")
        .exec_async(&mut conn)
        .await
        .unwrap();
    assert!(a.bus.catch_up("app", None).await.unwrap(), "all tables");
    assert_eq!(a.clock.get("app", "w"), lsn::parse("3/0").unwrap());
    assert!(!a.bus.catch_up("other", None).await.unwrap(), "no hash");
    drop(conn);
    blocking(|| server.stop());
    let bus = a.bus.clone();
    wait_until("the bus to notice", move || !bus.is_connected()).await;
    assert!(
        a.bus.catch_up("app", Some(&["t"])).await.is_err(),
        "Redis is gone: the read must do without"
    );
}

/// Clients connected to the server, besides the one asking.
async fn other_clients(url: &str) -> usize {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .unwrap();
    list.lines().count() - 1
}

async fn wait_for_clients(url: &str, n: usize) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let now = other_clients(url).await;
        if now == n {
            return;
        }
        assert!(Instant::now() < deadline, "{now} clients, expected {n}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_or_drop_stops_the_bus_tasks() {
    let server = blocking(RedisServer::start).unwrap();
    let (stop, shutdown) = watch::channel(false);
    let a = proxy(&server.url(), &shutdown);
    connected(&a).await;
    // One publishing, one subscribed and one reading connection.
    wait_for_clients(&server.url(), 3).await;
    stop.send(true).unwrap();
    let bus = a.bus.clone();
    wait_until("bus stopped", move || !bus.is_connected()).await;
    wait_for_clients(&server.url(), 0).await;
    a.bus.publish(write("app", &["t"], 1));
    assert_eq!(a.bus.dropped(), 1);

    // Dropping the last handle also ends the tasks, without a shutdown signal.
    let (_stop, shutdown) = watch::channel(false);
    let b = proxy(&server.url(), &shutdown);
    connected(&b).await;
    wait_for_clients(&server.url(), 3).await;
    drop(b);
    wait_for_clients(&server.url(), 0).await;
}

/// Echo server for the relay test: answers every byte it reads.
async fn echo_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn round_trip(s: &mut tokio::net::TcpStream, payload: &[u8]) -> Vec<u8> {
    s.write_all(payload).await.unwrap();
    let mut back = vec![0u8; payload.len()];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut back))
        .await
        .expect("echo within the deadline")
        .unwrap();
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_relay_forwards_data_intact_both_ways() {
    let echo = echo_server().await;
    let relay = DelayRelay::start(echo, Duration::from_millis(30)).unwrap();
    let mut s = tokio::net::TcpStream::connect(relay.addr()).await.unwrap();
    s.set_nodelay(true).unwrap();

    let started = Instant::now();
    assert_eq!(round_trip(&mut s, b"ping").await, b"ping");
    println!("round trip through a 30 ms relay: {:?}", started.elapsed());

    // Larger than one chunk, with a pattern that shows reordering or loss.
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(round_trip(&mut s, &big).await, big);

    relay.set_delay(Duration::ZERO);
    let started = Instant::now();
    assert_eq!(round_trip(&mut s, b"pong").await, b"pong");
    println!(
        "round trip with the delay set to zero: {:?}",
        started.elapsed()
    );

    // A new connection after the change, and a half-close passed on in order.
    let mut s2 = tokio::net::TcpStream::connect(relay.addr()).await.unwrap();
    s2.write_all(b"last words").await.unwrap();
    s2.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, s2.read_to_end(&mut rest))
        .await
        .expect("echo server closes after the half-close")
        .unwrap();
    assert_eq!(rest, b"last words");
    drop(relay);
    // Dropping the relay stops it: nothing listens on its port any more.
}

#[test]
fn delay_relay_works_without_a_runtime() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let echo = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
    });
    let relay = DelayRelay::start(addr, Duration::from_millis(5)).unwrap();
    let port = relay.port;
    let mut s = std::net::TcpStream::connect(relay.addr()).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(b"hello").unwrap();
    let mut back = [0u8; 5];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello");
    echo.join().unwrap();
    drop(relay);
    // Nothing listens on its port any more. Asked until a deadline: a child another
    // test forks in this process holds a copy of every descriptor until it execs, so
    // the closed listener can linger for that long.
    let deadline = std::time::Instant::now() + DEADLINE;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the dropped relay still accepts connections"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
