//! The proxy's front door: authentication, startup negotiation, TLS, limits and hostile
//! input. Each case checks the proxy answers as PostgreSQL would (SQLSTATE included) and
//! that other clients are not affected.

use crate::common::{self, sqlstate, start, wait_for, Setup};
use pgwarden::config::AuthMethod;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads whatever the proxy sends until it closes the connection (bounded).
async fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let res = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        res.is_ok(),
        "proxy did not close the connection; got {out:?}"
    );
    out
}

fn startup_packet(params: &[(&str, &str)], version: u32) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut p = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    p.extend(body);
    p
}

/// The SQLSTATE of the first ErrorResponse in a reply, walking whole messages.
fn error_code(reply: &[u8]) -> Option<String> {
    let mut rest = reply;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let body = rest.get(5..len + 1)?;
        if rest[0] == b'E' {
            let mut fields = body;
            while let Some((&t, tail)) = fields.split_first() {
                let end = tail.iter().position(|&b| b == 0)?;
                if t == b'C' {
                    return Some(String::from_utf8_lossy(&tail[..end]).into_owned());
                }
                fields = &tail[end + 1..];
            }
        }
        rest = &rest[len + 1..];
    }
    None
}

async fn still_serves(env: &common::Env) {
    let c = env.connect().await;
    let row = c
        .query_one("select 41 + 1", &[])
        .await
        .expect("query after bad input");
    assert_eq!(row.get::<_, i32>(0), 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_login_and_wrong_password() {
    let env = start(Setup::default()).await;
    still_serves(&env).await;
    let e = env
        .connect_as("app", "wrong", "app")
        .await
        .expect_err("wrong password fails");
    assert_eq!(sqlstate(&e).as_deref(), Some("28P01"), "{e}");
    let e = env
        .connect_as("nosuchuser", "x", "app")
        .await
        .expect_err("unknown user fails");
    assert_eq!(sqlstate(&e).as_deref(), Some("28P01"), "{e}");
    let e = env
        .connect_as("app", "app", "nosuchdb")
        .await
        .expect_err("unknown database fails");
    assert_eq!(sqlstate(&e).as_deref(), Some("3D000"), "{e}");
    still_serves(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_client_auth_and_md5_server_role() {
    let env = start(Setup {
        tweak: |c| c.auth.method = AuthMethod::Md5,
        ..Default::default()
    })
    .await;
    still_serves(&env).await;
    let e = env
        .connect_as("app", "nope", "app")
        .await
        .expect_err("wrong md5 password fails");
    assert_eq!(sqlstate(&e).as_deref(), Some("28P01"));
    // md5user's password is stored as md5 on the server, so the proxy answers the
    // server's md5 challenge.
    let c = env
        .connect_as("md5user", "md5pw", "app")
        .await
        .expect("md5user logs in");
    let who: String = c
        .query_one("select current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "md5user");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_login_with_scram() {
    let env = start(Setup::default()).await;
    let (ok, out, err) = common::run_cmd(common::psql(&env.dsn("app", "app", "app")).args([
        "-At",
        "-c",
        "select current_user, current_database()",
    ]));
    assert!(ok, "psql failed: {err}");
    assert_eq!(out.trim(), "app|app");
    let (ok, _, err) =
        common::run_cmd(common::psql(&env.dsn("app", "bad", "app")).args(["-c", "select 1"]));
    assert!(!ok);
    assert!(err.contains("password authentication failed"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_the_client_side() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let (ok, _, err) = common::run_cmd(std::process::Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=localhost",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]));
    assert!(ok, "openssl: {err}");
    let env = start(Setup {
        extra_yaml: format!(
            "tls:\n  cert: {}\n  key: {}\n",
            cert.display(),
            key.display()
        ),
        ..Default::default()
    })
    .await;
    let dsn = format!(
        "postgres://app:app@127.0.0.1:{}/app?sslmode=require",
        env.port()
    );
    let (ok, out, err) = common::run_cmd(common::psql(&dsn).args([
        "-c",
        "\\conninfo",
        "-c",
        "select 'over tls' as x",
    ]));
    assert!(ok, "psql over TLS failed: {err}");
    assert!(out.contains("SSL connection"), "not encrypted: {out}");
    assert!(out.contains("over tls"), "{out}");
    // Plain clients are still served when they do not ask for TLS.
    still_serves(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tls_config_sslrequest_gets_n() {
    let env = start(Setup::default()).await;
    let dsn = format!(
        "postgres://app:app@127.0.0.1:{}/app?sslmode=prefer",
        env.port()
    );
    let (ok, out, err) = common::run_cmd(common::psql(&dsn).args(["-At", "-c", "select 7"]));
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "7");
    let dsn = format!(
        "postgres://app:app@127.0.0.1:{}/app?sslmode=require",
        env.port()
    );
    let (ok, _, err) = common::run_cmd(common::psql(&dsn).args(["-c", "select 1"]));
    assert!(!ok && err.contains("SSL"), "{err}");
    // GSSENCRequest is answered 'N' so a gssencmode=prefer client falls back.
    let mut s = TcpStream::connect(env.proxy.addr).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30])
        .await
        .unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"N");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_bad_startup_packets() {
    let env = start(Setup::default()).await;
    // An HTTP request: its first four bytes read as a huge length.
    let mut s = TcpStream::connect(env.proxy.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let reply = read_until_closed(&mut s).await;
    assert_eq!(error_code(&reply).as_deref(), Some("08P01"), "{reply:?}");

    // A startup length of 2 GiB is refused before anything is allocated.
    let mut s = TcpStream::connect(env.proxy.addr).await.unwrap();
    s.write_all(&[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0])
        .await
        .unwrap();
    let reply = read_until_closed(&mut s).await;
    assert_eq!(error_code(&reply).as_deref(), Some("08P01"), "{reply:?}");

    // Protocol 2.0 is not spoken.
    let mut s = TcpStream::connect(env.proxy.addr).await.unwrap();
    s.write_all(&startup_packet(&[("user", "app")], 2 << 16))
        .await
        .unwrap();
    let reply = read_until_closed(&mut s).await;
    assert_eq!(error_code(&reply).as_deref(), Some("0A000"), "{reply:?}");
    assert!(String::from_utf8_lossy(&reply).contains("unsupported frontend protocol"));

    // No user name.
    let mut s = TcpStream::connect(env.proxy.addr).await.unwrap();
    s.write_all(&startup_packet(&[("database", "app")], 3 << 16))
        .await
        .unwrap();
    let reply = read_until_closed(&mut s).await;
    assert_eq!(error_code(&reply).as_deref(), Some("28000"), "{reply:?}");

    // Random bytes after a valid startup, where a password message should be.
    let mut s = TcpStream::connect(env.proxy.addr).await.unwrap();
    s.write_all(&startup_packet(
        &[("user", "app"), ("database", "app")],
        3 << 16,
    ))
    .await
    .unwrap();
    s.write_all(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7])
        .await
        .unwrap();
    let _ = read_until_closed(&mut s).await;

    still_serves(&env).await;
}

/// Logs in with trust auth over a raw socket and returns it after ReadyForQuery.
async fn raw_login(env: &common::Env) -> TcpStream {
    let mut s = TcpStream::connect(env.proxy.addr).await.unwrap();
    s.write_all(&startup_packet(
        &[("user", "app"), ("database", "app")],
        3 << 16,
    ))
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), async {
        // ReadyForQuery is 'Z' 0 0 0 5 'I'.
        while !got.windows(6).any(|w| w == b"Z\0\0\0\x05I") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed during login: {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("login completes");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_invalid_messages_after_login() {
    let env = start(Setup {
        tweak: |c| {
            c.auth.method = AuthMethod::Trust;
            c.limits.max_message_bytes = 64 * 1024;
        },
        ..Default::default()
    })
    .await;
    let bystander = env.connect().await;

    // A Query claiming 2 GiB: refused with 54000 instead of buffering it.
    let mut s = raw_login(&env).await;
    s.write_all(&[b'Q', 0x7f, 0xff, 0xff, 0xff, b's'])
        .await
        .unwrap();
    let reply = read_until_closed(&mut s).await;
    assert_eq!(error_code(&reply).as_deref(), Some("54000"), "{reply:?}");

    // Just over the configured limit.
    let mut s = raw_login(&env).await;
    let len = (64 * 1024 + 1) as u32;
    let mut msg = vec![b'Q'];
    msg.extend_from_slice(&len.to_be_bytes());
    s.write_all(&msg).await.unwrap();
    let reply = read_until_closed(&mut s).await;
    assert_eq!(error_code(&reply).as_deref(), Some("54000"), "{reply:?}");

    // A length below the minimum of 4.
    let mut s = raw_login(&env).await;
    s.write_all(&[b'Q', 0, 0, 0, 2]).await.unwrap();
    let reply = read_until_closed(&mut s).await;
    assert!(error_code(&reply).is_some(), "{reply:?}");

    // An unknown message type.
    let mut s = raw_login(&env).await;
    s.write_all(&[b'!', 0, 0, 0, 4]).await.unwrap();
    let reply = read_until_closed(&mut s).await;
    assert_eq!(error_code(&reply).as_deref(), Some("08P01"), "{reply:?}");

    // A client that vanishes half way through a message.
    let mut s = raw_login(&env).await;
    s.write_all(&[b'Q', 0, 0, 0, 100, b's', b'e'])
        .await
        .unwrap();
    drop(s);

    let n: i64 = bystander
        .query_one("select count(*) from pg_class", &[])
        .await
        .unwrap()
        .get(0);
    assert!(n > 0);
    still_serves(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_dropped_after_startup_timeout() {
    let env = start(Setup {
        tweak: |c| c.limits.startup_timeout_ms = 1500,
        ..Default::default()
    })
    .await;
    let mut silent = TcpStream::connect(env.proxy.addr).await.unwrap();
    // A client that starts SCRAM and then stalls is dropped too.
    let mut stalled = TcpStream::connect(env.proxy.addr).await.unwrap();
    stalled
        .write_all(&startup_packet(
            &[("user", "app"), ("database", "app")],
            3 << 16,
        ))
        .await
        .unwrap();
    still_serves(&env).await;
    read_until_closed(&mut silent).await;
    read_until_closed(&mut stalled).await;
    still_serves(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_exhaustion_gives_53300_then_recovers() {
    let env = start(Setup {
        tweak: |c| {
            c.pool.size = 1;
            c.pool.checkout_timeout_ms = 300;
        },
        ..Default::default()
    })
    .await;
    let holder = env.connect().await;
    holder.batch_execute("begin; select 1").await.unwrap();
    // The only server connection is held by an open transaction.
    let waiter = env.connect().await;
    let e = waiter
        .simple_query("select 1")
        .await
        .expect_err("no server connection free");
    assert_eq!(sqlstate(&e).as_deref(), Some("53300"), "{e}");
    // Extended protocol gets the same error and the session stays usable.
    let e = waiter
        .query("select $1::int", &[&1i32])
        .await
        .expect_err("still none free");
    assert_eq!(sqlstate(&e).as_deref(), Some("53300"), "{e}");
    holder.batch_execute("commit").await.unwrap();
    let v: i32 = waiter
        .query_one("select $1::int", &[&5i32])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_limit_gives_53300() {
    let env = start(Setup {
        tweak: |c| c.limits.max_client_connections = 2,
        ..Default::default()
    })
    .await;
    let a = env.connect().await;
    let b = env.connect().await;
    let e = env
        .connect_as("app", "app", "app")
        .await
        .expect_err("third client refused");
    assert_eq!(sqlstate(&e).as_deref(), Some("53300"), "{e}");
    drop(a);
    // The slot frees once the proxy notices the first client left.
    let c = wait_for("a free client slot", Duration::from_secs(10), || async {
        env.connect_as("app", "app", "app").await.ok()
    })
    .await;
    c.simple_query("select 1").await.unwrap();
    b.simple_query("select 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_connection_killed_between_transactions_is_replaced() {
    let env = start(Setup::default()).await;
    let c = env.connect().await;
    c.simple_query("select 1").await.unwrap();
    let direct = env.direct().await;
    direct
        .simple_query(
            "select pg_terminate_backend(pid) from pg_stat_activity where usename = 'app'",
        )
        .await
        .unwrap();
    // The pooled connection is dead; the next request gets a fresh one.
    let v: i32 = c.query_one("select 3", &[]).await.unwrap().get(0);
    assert_eq!(v, 3);
}
