//! Many clients, small pool.

use super::*;

/// 20 clients share 2 server connections in transaction mode: 50 parameterised queries
/// each (every client checks its own value comes back) plus transactions that insert.
/// No errors, and exactly the committed rows exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_on_a_small_pool() {
    const CLIENTS: i32 = 20;
    const QUERIES: i32 = 50;
    const TXN_EVERY: i32 = 10;
    let env = common::start(Setup {
        tweak: |c| c.pool.size = 2,
        ..Default::default()
    })
    .await;
    env.connect()
        .await
        .batch_execute("create table m (client int, n int)")
        .await
        .unwrap();

    let mut tasks = Vec::new();
    for id in 0..CLIENTS {
        let client = env.connect().await;
        tasks.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            for j in 0..QUERIES {
                let want = id * 1000 + j;
                match client.query_one("select $1::int", &[&want]).await {
                    Ok(r) if r.get::<_, i32>(0) == want => {}
                    Ok(r) => {
                        errors.push(format!("client {id} query {j}: got {}", r.get::<_, i32>(0)))
                    }
                    Err(e) => {
                        errors.push(format!("client {id} query {j}: {e} ({:?})", sqlstate(&e)))
                    }
                }
                if j % TXN_EVERY == 0 {
                    let txn = async {
                        client.batch_execute("BEGIN").await?;
                        client
                            .execute("insert into m values ($1, $2)", &[&id, &j])
                            .await?;
                        client.batch_execute("COMMIT").await
                    };
                    if let Err(e) = txn.await {
                        errors.push(format!("client {id} txn {j}: {e} ({:?})", sqlstate(&e)));
                        let _ = client.batch_execute("ROLLBACK").await;
                    }
                }
            }
            errors
        }));
    }
    let mut errors = Vec::new();
    for t in tasks {
        errors.extend(t.await.expect("client task"));
    }
    assert!(
        errors.is_empty(),
        "{} errors, first ones:\n{}",
        errors.len(),
        errors
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let row = env
        .direct()
        .await
        .query_one("select count(*), count(distinct (client, n)) from m", &[])
        .await
        .unwrap();
    let want = (CLIENTS * (QUERIES / TXN_EVERY)) as i64;
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (want, want));
}
