//! Transactions and savepoints.

use super::*;

/// A transaction with a savepoint rolled back in the middle commits exactly the rows
/// outside the rolled-back part; until COMMIT nothing is visible to others; a
/// rolled-back transaction leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_with_savepoints() {
    let env = start().await;
    let mut c = env.connect().await;
    let other = env.connect().await;
    let direct = env.direct().await;
    c.batch_execute("create table sp (v int)").await.unwrap();

    async fn visible(client: &tokio_postgres::Client) -> Vec<i32> {
        client
            .query("select v from sp order by v", &[])
            .await
            .expect("read sp")
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    // Statements one by one (simple protocol).
    for sql in [
        "BEGIN",
        "insert into sp values (1)",
        "SAVEPOINT a",
        "insert into sp values (2)",
        "ROLLBACK TO a",
        "insert into sp values (3)",
    ] {
        c.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    assert_eq!(visible(&c).await, vec![1, 3], "inside the transaction");
    assert_eq!(
        visible(&other).await,
        Vec::<i32>::new(),
        "uncommitted rows must not be visible"
    );
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(visible(&other).await, vec![1, 3]);
    assert_eq!(visible(&direct).await, vec![1, 3]);

    // The driver's transaction API (extended protocol), nested savepoint.
    {
        let mut tx = c.transaction().await.unwrap();
        tx.execute("insert into sp values ($1)", &[&10i32])
            .await
            .unwrap();
        {
            let sp = tx.savepoint("b").await.unwrap();
            sp.execute("insert into sp values ($1)", &[&11i32])
                .await
                .unwrap();
            sp.rollback().await.unwrap();
        }
        tx.execute("insert into sp values ($1)", &[&12i32])
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    assert_eq!(visible(&direct).await, vec![1, 3, 10, 12]);

    // A rolled-back transaction leaves nothing.
    c.batch_execute("BEGIN; insert into sp values (20); insert into sp values (21)")
        .await
        .unwrap();
    assert_eq!(visible(&c).await, vec![1, 3, 10, 12, 20, 21]);
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(visible(&other).await, vec![1, 3, 10, 12]);
    assert_eq!(visible(&direct).await, vec![1, 3, 10, 12]);
}
