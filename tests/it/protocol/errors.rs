//! Errors and recovery.

use super::*;
use crate::common::Wire;

/// Errors carry the server's SQLSTATE in both protocols; the session recovers; in an
/// explicit transaction every statement gets 25P02 until ROLLBACK; and the
/// ReadyForQuery status the client sees (I/T/E) is the server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_then_recovery() {
    let env = start().await;
    let c = env.connect().await;

    expect_code(
        c.simple_query("select 1/0").await,
        "22012",
        "simple division by zero",
    );
    assert_eq!(simple_value(&c, "select 1").await, s("1"));
    expect_code(
        c.simple_query("select * from no_such_table").await,
        "42P01",
        "simple undefined table",
    );
    assert_eq!(simple_value(&c, "select 2").await, s("2"));
    expect_code(
        c.query("select 1/$1::int", &[&0i32]).await,
        "22012",
        "extended division by zero",
    );
    assert_eq!(
        c.query_one("select 3", &[]).await.unwrap().get::<_, i32>(0),
        3
    );
    expect_code(
        c.query("select * from no_such_table", &[]).await,
        "42P01",
        "extended undefined table",
    );
    assert_eq!(
        c.query_one("select 4", &[]).await.unwrap().get::<_, i32>(0),
        4
    );

    // Explicit transaction, simple protocol.
    c.batch_execute("begin").await.unwrap();
    expect_code(
        c.simple_query("select 1/0").await,
        "22012",
        "error in transaction",
    );
    expect_code(
        c.simple_query("select 1").await,
        "25P02",
        "statement after the error",
    );
    expect_code(
        c.query("select 1", &[]).await,
        "25P02",
        "extended statement after the error",
    );
    c.batch_execute("rollback").await.unwrap();
    assert_eq!(simple_value(&c, "select 5").await, s("5"));

    // Explicit transaction, extended protocol.
    c.batch_execute("begin").await.unwrap();
    expect_code(
        c.query("select * from no_such_table", &[]).await,
        "42P01",
        "error in transaction",
    );
    expect_code(
        c.query("select 1", &[]).await,
        "25P02",
        "statement after the error",
    );
    c.batch_execute("rollback").await.unwrap();
    assert_eq!(
        c.query_one("select 6", &[]).await.unwrap().get::<_, i32>(0),
        6
    );

    // On the wire: transaction status letters, the error's fields, and a multi-statement
    // string that fails in the middle (one implicit transaction: nothing of it stays).
    let mut w = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    w.simple("create table ev (v int)").await;
    let msgs = w
        .simple("insert into ev values (1); select 1/0; insert into ev values (2)")
        .await;
    assert_eq!(common::describe_all(&msgs).matches("E(").count(), 1);
    assert_eq!(errors(&msgs), ["22012"]);
    let err = msgs.iter().find(|m| m.tag == b'E').unwrap();
    assert_eq!(err.field(b'S').as_deref(), Some("ERROR"));
    assert_eq!(err.field(b'M').as_deref(), Some("division by zero"));
    assert_eq!(ready_status(&msgs), 'I');
    let msgs = w.simple("select count(*) from ev").await;
    assert_eq!(
        msgs.iter().find_map(Msg::data_row),
        Some(vec![Some(b"0".to_vec())])
    );

    assert_eq!(ready_status(&w.simple("begin").await), 'T');
    let msgs = w.simple("select 1/0").await;
    assert_eq!(
        (errors(&msgs), ready_status(&msgs)),
        (vec!["22012".to_string()], 'E')
    );
    let msgs = w.simple("select 1").await;
    assert_eq!(
        (errors(&msgs), ready_status(&msgs)),
        (vec!["25P02".to_string()], 'E')
    );
    assert_eq!(ready_status(&w.simple("rollback").await), 'I');
    let msgs = w.simple("select 7").await;
    assert_eq!(
        msgs.iter().find_map(Msg::data_row),
        Some(vec![Some(b"7".to_vec())])
    );
}
