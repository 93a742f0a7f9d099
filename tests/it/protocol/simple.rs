//! Simple protocol.

use super::*;
use crate::common::Wire;

/// Several statements in one Query message: each gets its own rows and CommandComplete,
/// and there is exactly one ReadyForQuery at the end. Drivers (and migration tools)
/// send scripts like this.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_protocol_multi_statement() {
    let env = start().await;
    let c = env.connect().await;
    let script = |t: &str| {
        format!(
            "create table {t} (id int, name text); \
             insert into {t} values (1, 'a'), (2, 'b'), (3, NULL); \
             select id, name from {t} order by id; \
             update {t} set name = 'z' where id >= 2; \
             delete from {t} where id = 1; \
             select count(*) from {t}"
        )
    };
    let msgs = c.simple_query(&script("t1")).await.expect("script runs");
    let st = statements(&msgs);
    let counts: Vec<u64> = st.iter().map(|(_, n)| *n).collect();
    assert_eq!(counts, vec![0, 3, 3, 2, 1, 1]);
    assert_eq!(
        st[2].0,
        vec![
            vec![s("1"), s("a")],
            vec![s("2"), s("b")],
            vec![s("3"), None]
        ]
    );
    assert_eq!(st[5].0, vec![vec![s("2")]]);

    // On the wire: the exact command tags, a RowDescription before each result set, one
    // ReadyForQuery with status Idle.
    let mut w = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    let msgs = w.simple(&script("t2")).await;
    assert_eq!(
        tags(&msgs),
        [
            "CREATE TABLE",
            "INSERT 0 3",
            "SELECT 3",
            "UPDATE 2",
            "DELETE 1",
            "SELECT 1"
        ],
        "{}",
        common::describe_all(&msgs)
    );
    assert_eq!(
        msgs.iter().filter(|m| m.tag == b'T').count(),
        2,
        "two RowDescriptions"
    );
    assert_eq!(
        msgs.iter().filter(|m| m.tag == b'Z').count(),
        1,
        "one ReadyForQuery"
    );
    assert_eq!(ready_status(&msgs), 'I');

    // An empty query string gets EmptyQueryResponse, not an error.
    let msgs = w.simple("").await;
    assert_eq!(common::describe_all(&msgs), "I Z(I)");
}
