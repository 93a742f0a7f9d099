//! NULLs.

use super::*;
use crate::common::{fe, Wire};

/// NULL parameters and NULL columns in both protocols, kept apart from empty values
/// (length -1 versus length 0 on the wire).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nulls_in_both_protocols() {
    let env = start().await;
    let c = env.connect().await;

    let none_i: Option<i32> = None;
    let none_t: Option<&str> = None;
    let none_b: Option<Vec<u8>> = None;
    let row = c
        .query_one(
            "select $1::int4, $2::text, $3::bytea, null::int8, 5",
            &[&none_i, &none_t, &none_b],
        )
        .await
        .expect("NULL parameters");
    assert_eq!(row.get::<_, Option<i32>>(0), None);
    assert_eq!(row.get::<_, Option<String>>(1), None);
    assert_eq!(row.get::<_, Option<Vec<u8>>>(2), None);
    assert_eq!(row.get::<_, Option<i64>>(3), None);
    assert_eq!(row.get::<_, Option<i32>>(4), Some(5));

    // Stored NULLs and stored empty values come back as they went in.
    c.batch_execute("create table n (id int, v text, b bytea)")
        .await
        .unwrap();
    let empty: Vec<u8> = Vec::new();
    c.execute("insert into n values (1, $1, $2)", &[&none_t, &none_b])
        .await
        .unwrap();
    c.execute("insert into n values (2, $1, $2)", &[&"", &empty])
        .await
        .unwrap();
    let rows = c
        .query("select v, b from n order by id", &[])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, Option<String>>(0), None);
    assert_eq!(rows[0].get::<_, Option<Vec<u8>>>(1), None);
    assert_eq!(rows[1].get::<_, Option<String>>(0), s(""));
    assert_eq!(rows[1].get::<_, Option<Vec<u8>>>(1), Some(Vec::new()));

    // Simple protocol (text format).
    let st = statements(
        &c.simple_query("select null::int, '', 'x', null; select v from n order by id")
            .await
            .unwrap(),
    );
    assert_eq!(st[0].0, vec![vec![None, s(""), s("x"), None]]);
    assert_eq!(st[1].0, vec![vec![None], vec![s("")]]);

    // On the wire: NULL is length -1, '' is length 0.
    let mut w = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    let msgs = w.simple("select null::text, ''").await;
    let row = msgs.iter().find_map(Msg::data_row).expect("a DataRow");
    assert_eq!(row, vec![None, Some(Vec::new())]);

    // Extended protocol by hand, NULL text parameter.
    let mut req = fe::parse("", "select $1::text is null, $2::text");
    req.extend(fe::bind("", "", &[None, Some(b"v")]));
    req.extend(fe::execute("", 0));
    req.extend(fe::sync());
    w.send(&req).await;
    let msgs = w.until_ready().await;
    let row = msgs
        .iter()
        .find_map(Msg::data_row)
        .unwrap_or_else(|| panic!("{}", common::describe_all(&msgs)));
    assert_eq!(row, vec![Some(b"t".to_vec()), Some(b"v".to_vec())]);
}
