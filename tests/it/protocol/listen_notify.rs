//! LISTEN / NOTIFY.

use super::*;
use crate::common::Watched;
use tokio_postgres::AsyncMessage;

/// Notifications arrive asynchronously, while the listener is idle; the proxy must pass
/// them on without a request in flight (session mode pins the server connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_in_session_mode() {
    let env = start_mode("session").await;
    let mut a = Watched::connect(&env.dsn("app", "app", "app")).await;
    a.client.batch_execute("LISTEN chan").await.expect("listen");

    let b = env.connect().await;
    b.batch_execute("NOTIFY chan, 'hello'")
        .await
        .expect("notify");

    let n = tokio::time::timeout(DEADLINE, async {
        loop {
            match a.rx.recv().await {
                Some(AsyncMessage::Notification(n)) => return n,
                Some(_) => continue,
                None => panic!("listener connection closed"),
            }
        }
    })
    .await
    .expect("notification within the deadline");
    assert_eq!(n.channel(), "chan");
    assert_eq!(n.payload(), "hello");

    // From outside the proxy too, and a second one to the same listener.
    env.direct()
        .await
        .batch_execute("select pg_notify('chan', 'from direct')")
        .await
        .unwrap();
    let n = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Some(AsyncMessage::Notification(n)) = a.rx.recv().await {
                return n;
            }
        }
    })
    .await
    .expect("second notification within the deadline");
    assert_eq!(n.payload(), "from direct");
    // The listener still answers queries.
    assert_eq!(simple_value(&a.client, "select 1").await, s("1"));
}
