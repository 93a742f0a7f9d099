//! ParameterStatus and session settings.

use super::*;
use crate::common::{Watched, Wire};
use std::collections::HashSet;

/// The client's startup parameters are what it sees (ParameterStatus at login and
/// SHOW); a SET reports its new value with ParameterStatus, and a ROLLBACK that undoes
/// it reports the old one again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameter_status_and_set() {
    let env = start().await;
    let w = Watched::connect(&format!(
        "{}&application_name=foo",
        env.dsn("app", "app", "app")
    ))
    .await;
    assert_eq!(
        w.parameter("application_name").as_deref(),
        Some("foo"),
        "ParameterStatus at login"
    );
    assert_eq!(
        simple_value(&w.client, "show application_name").await,
        s("foo")
    );
    let current: String = w
        .client
        .query_one("select current_setting('application_name')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(current, "foo");

    // The login TimeZone report agrees with the session's setting.
    let login_tz = w.parameter("TimeZone").expect("TimeZone reported at login");
    assert_eq!(
        simple_value(&w.client, "show timezone").await,
        Some(login_tz.clone())
    );

    w.client.batch_execute("BEGIN").await.unwrap();
    w.client
        .batch_execute("SET TimeZone = 'Pacific/Chatham'")
        .await
        .unwrap();
    assert_eq!(
        simple_value(&w.client, "show timezone").await,
        s("Pacific/Chatham")
    );
    assert_eq!(w.parameter("TimeZone").as_deref(), Some("Pacific/Chatham"));
    w.client
        .batch_execute("SET TimeZone = 'UTC'")
        .await
        .unwrap();
    assert_eq!(simple_value(&w.client, "show timezone").await, s("UTC"));
    assert_eq!(
        w.parameter("TimeZone").as_deref(),
        Some("UTC"),
        "ParameterStatus after SET"
    );
    w.client.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        w.parameter("TimeZone"),
        Some(login_tz.clone()),
        "ParameterStatus after ROLLBACK"
    );
    assert_eq!(
        simple_value(&w.client, "show timezone").await,
        Some(login_tz)
    );

    // The standard login reports are there, with the server's real values.
    let wire = Wire::connect(
        env.port(),
        "app",
        "app",
        "app",
        &[("application_name", "bar")],
    )
    .await;
    let direct = env.direct().await;
    for name in [
        "server_version",
        "server_encoding",
        "DateStyle",
        "integer_datetimes",
        "standard_conforming_strings",
    ] {
        let want: String = direct
            .query_one(&format!("show {name}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            wire.login_parameter(name),
            Some(want),
            "login ParameterStatus {name}"
        );
    }
    assert_eq!(
        wire.login_parameter("application_name").as_deref(),
        Some("bar")
    );
    assert!(
        wire.login.iter().any(|m| m.tag == b'K'),
        "BackendKeyData at login"
    );
}

/// Transaction mode with ONE server connection: two clients with different
/// application_name alternate on it, and each always sees its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_name_per_client_on_a_shared_server() {
    let env = common::start(Setup {
        tweak: |c| c.pool.size = 1,
        ..Default::default()
    })
    .await;
    let dsn = env.dsn("app", "app", "app");
    let alpha = Watched::connect(&format!("{dsn}&application_name=alpha")).await;
    let beta = Watched::connect(&format!("{dsn}&application_name=beta")).await;
    let direct = env.direct().await;
    let mut server_pids = HashSet::new();
    for i in 0..10 {
        for (who, w) in [("alpha", &alpha), ("beta", &beta)] {
            let r = w
                .client
                .query_one(
                    "select current_setting('application_name'), pg_backend_pid()",
                    &[],
                )
                .await
                .unwrap_or_else(|e| panic!("{who} round {i}: {e}"));
            assert_eq!(r.get::<_, String>(0), who, "round {i}");
            server_pids.insert(r.get::<_, i32>(1));
            assert_eq!(
                simple_value(&w.client, "show application_name")
                    .await
                    .as_deref(),
                Some(who)
            );
            assert_eq!(
                w.parameter("application_name").as_deref(),
                Some(who),
                "no foreign ParameterStatus"
            );
        }
    }
    assert_eq!(
        server_pids.len(),
        1,
        "both clients used the one server connection"
    );
    let n: i64 = direct
        .query_one(
            "select count(*) from pg_stat_activity where usename = 'app' and application_name <> 'pgwarden-monitor'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "pool.size = 1 means one server connection");
}
