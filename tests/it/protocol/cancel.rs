//! Cancel.

use super::*;
use tokio_postgres::NoTls;

/// A CancelRequest sent to the proxy (with the key the proxy gave the client) must
/// reach the server running the client's query; the client then goes on normally.
async fn cancel_round_trip(env: &Env) {
    let client = env.connect().await;
    let direct = env.direct().await;
    let token = client.cancel_token();
    // Simple protocol: "active" in pg_stat_activity then means the sleep is running, not
    // a Parse of it (a cancel during a Parse would be ignored by the idle server).
    let query = client.simple_query("select pg_sleep(30)");
    let canceller = async {
        let d = &direct;
        common::wait_for(
            "pg_sleep(30) running on the server",
            DEADLINE,
            || async move {
                let n: i64 = d
                    .query_one(
                        "select count(*) from pg_stat_activity \
                     where state = 'active' and query = 'select pg_sleep(30)'",
                        &[],
                    )
                    .await
                    .ok()?
                    .get(0);
                (n == 1).then_some(())
            },
        )
        .await;
        token
            .cancel_query(NoTls)
            .await
            .expect("cancel request sent");
    };
    let (result, ()) = tokio::time::timeout(DEADLINE, async { tokio::join!(query, canceller) })
        .await
        .expect("the cancelled query ends well before pg_sleep(30) would");
    expect_code(result, "57014", "cancelled query");

    let one: i32 = client
        .query_one("select 1", &[])
        .await
        .expect("client works after cancel")
        .get(0);
    assert_eq!(one, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_in_transaction_mode() {
    cancel_round_trip(&start_mode("transaction").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_in_session_mode() {
    cancel_round_trip(&start_mode("session").await).await;
}

/// Over a server's Unix socket the cancel takes the same way back (a new connection to
/// that socket, not to a TCP port).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_over_a_unix_socket() {
    let env = common::start(Setup {
        unix_sockets: true,
        ..Default::default()
    })
    .await;
    cancel_round_trip(&env).await;
}
