//! Tests of the sandbox harness itself, against real PostgreSQL processes: replication,
//! cleanup on drop and on panic, password authentication, parallel clusters, failover.

use pgwarden::sandbox::postgres::{ClusterOptions, PgCluster, PgNode};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(30);

fn cluster(replicas: usize) -> PgCluster {
    PgCluster::start(ClusterOptions {
        replicas,
        ..Default::default()
    })
    .expect("cluster starts")
}

/// Polls `query` on `node` until it returns `want`, failing after TIMEOUT.
fn wait_for(node: &PgNode, query: &str, want: &str) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let got = node.psql("postgres", "postgres", query);
        if matches!(&got, Ok(s) if s == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: `{query}` gave {got:?}, want {want:?}",
            node.name
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn accepts_connections(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[test]
fn replicas_stream_from_the_primary() {
    let c = cluster(2);
    assert_eq!(c.replicas.len(), 2);
    assert_eq!(c.replicas[0].name, "replica1");
    let p = &c.primary;
    p.psql(
        "postgres",
        "postgres",
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2), (3)",
    )
    .unwrap();
    for r in &c.replicas {
        wait_for(r, "SELECT count(*) FROM t", "3");
        assert_eq!(
            r.psql("postgres", "postgres", "SELECT pg_is_in_recovery()")
                .unwrap(),
            "t"
        );
    }
    assert_eq!(
        p.psql("postgres", "postgres", "SELECT pg_is_in_recovery()")
            .unwrap(),
        "f"
    );
    let slots = p
        .psql(
            "postgres",
            "postgres",
            "SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_replication_slots WHERE active",
        )
        .unwrap();
    assert_eq!(slots, "replica1,replica2");

    p.psql("postgres", "postgres", "INSERT INTO t VALUES (4)")
        .unwrap();
    c.wait_replicas_caught_up(TIMEOUT).unwrap();
    for r in &c.replicas {
        assert_eq!(
            r.psql("postgres", "postgres", "SELECT count(*) FROM t")
                .unwrap(),
            "4"
        );
    }
}

#[test]
fn drop_stops_servers_and_removes_files() {
    let c = cluster(1);
    let dir = c.dir().to_path_buf();
    let ports = [c.primary.port, c.replicas[0].port];
    assert!(dir.join("primary/PG_VERSION").is_file());
    assert!(ports.iter().all(|&p| accepts_connections(p)));
    drop(c);
    assert!(!dir.exists(), "{} still exists", dir.display());
    for port in ports {
        assert!(!accepts_connections(port), "port {port} still open");
    }
}

#[test]
fn drop_cleans_up_when_a_test_panics() {
    let (tx, rx) = std::sync::mpsc::channel::<(PathBuf, u16)>();
    let result = std::thread::spawn(move || {
        let c = cluster(0);
        tx.send((c.dir().to_path_buf(), c.primary.port)).unwrap();
        panic!("test failure while the cluster runs");
    })
    .join();
    assert!(result.is_err());
    let (dir, port) = rx.recv().unwrap();
    assert!(!dir.exists(), "{} still exists", dir.display());
    assert!(!accepts_connections(port), "port {port} still open");
}

#[tokio::test]
async fn roles_log_in_with_real_passwords() {
    use tokio_postgres::{error::SqlState, NoTls};
    let c = cluster(0);
    let p = &c.primary;

    for (user, password, db) in [("app", "app", "app"), ("md5user", "md5pw", "postgres")] {
        let (client, conn) = tokio_postgres::connect(&p.dsn(user, password, db), NoTls)
            .await
            .unwrap_or_else(|e| panic!("{user} logs in: {e}"));
        let task = tokio::spawn(conn);
        let row = client.query_one("SELECT current_user", &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), user);
        drop(client);
        task.await.unwrap().unwrap();
    }
    // The passwords really are stored with the two mechanisms.
    let stored = p
        .psql(
            "postgres",
            "postgres",
            "SELECT string_agg(rolname || '=' || split_part(rolpassword, '$', 1), ',' \
             ORDER BY rolname) FROM pg_authid WHERE rolname IN ('app', 'md5user')",
        )
        .unwrap();
    let (app, md5user) = stored.split_once(",md5user=").unwrap();
    assert_eq!(app, "app=SCRAM-SHA-256");
    assert!(md5user.starts_with("md5"), "{stored}");

    for user in ["app", "md5user"] {
        let err = tokio_postgres::connect(&p.dsn(user, "wrong", "postgres"), NoTls)
            .await
            .err()
            .unwrap_or_else(|| panic!("{user} must not log in with a wrong password"));
        assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
    }
}

#[test]
fn clusters_start_concurrently() {
    let handles: Vec<_> = (0..2).map(|_| std::thread::spawn(|| cluster(0))).collect();
    let clusters: Vec<PgCluster> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_ne!(clusters[0].primary.port, clusters[1].primary.port);
    assert_ne!(clusters[0].dir(), clusters[1].dir());
    for (i, c) in clusters.iter().enumerate() {
        let sql = format!("CREATE TABLE mine (v int); INSERT INTO mine VALUES ({i})");
        c.primary.psql("app", "app", &sql).unwrap();
    }
    for (i, c) in clusters.iter().enumerate() {
        let got = c.primary.psql("app", "app", "SELECT v FROM mine").unwrap();
        assert_eq!(got, i.to_string());
    }
}

#[test]
fn failover_promote_and_follow() {
    let c = cluster(2);
    let (p, r1, r2) = (&c.primary, &c.replicas[0], &c.replicas[1]);
    p.psql("postgres", "postgres", "CREATE TABLE f (v int)")
        .unwrap();
    c.wait_replicas_caught_up(TIMEOUT).unwrap();

    p.stop();
    assert!(!accepts_connections(p.port));
    r1.promote().unwrap();
    r2.follow(r1).unwrap();
    r1.psql("postgres", "postgres", "INSERT INTO f VALUES (7)")
        .unwrap();
    wait_for(r2, "SELECT string_agg(v::text, ',') FROM f", "7");
    assert_eq!(
        r2.psql("postgres", "postgres", "SELECT pg_is_in_recovery()")
            .unwrap(),
        "t"
    );

    // The old primary comes back on its port (as a second, diverged primary).
    p.start().unwrap();
    assert_eq!(
        p.psql("postgres", "postgres", "SELECT count(*) FROM f")
            .unwrap(),
        "0"
    );
}
