//! Large results.

use super::*;

/// 100k rows: the relay batches writes, and must neither drop, reorder nor duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_rows() {
    let env = start().await;
    let c = env.connect().await;
    let want_last_md5: String = env
        .direct()
        .await
        .query_one("select md5('100000')", &[])
        .await
        .unwrap()
        .get(0);
    let sql = "select g, md5(g::text) from generate_series(1, 100000) g order by g";

    let rows = c
        .query(sql, &[])
        .await
        .expect("100k rows, extended protocol");
    assert_eq!(rows.len(), 100_000);
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.get::<_, i32>(0), i as i32 + 1, "row {i} out of order");
    }
    let last = rows.last().unwrap();
    assert_eq!(last.get::<_, String>(1), want_last_md5);

    let msgs = c
        .simple_query(sql)
        .await
        .expect("100k rows, simple protocol");
    let st = statements(&msgs);
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].1, 100_000, "CommandComplete row count");
    let rows = &st[0].0;
    assert_eq!(rows.len(), 100_000);
    assert_eq!(rows[0], vec![s("1"), s("c4ca4238a0b923820dcc509a6f75849b")]);
    assert_eq!(rows[99_999], vec![s("100000"), Some(want_last_md5)]);
}
