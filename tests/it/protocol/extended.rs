//! Extended protocol.

use super::*;
use tokio_postgres::types::Type;

/// Binary-format parameters of several types, a prepared statement reused many times,
/// and an unnamed statement (Parse/Bind/Execute/Sync in one round trip).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_parameters_and_statements() {
    let env = start().await;
    let c = env.connect().await;

    let text = "héllo 'quoted' \\ back\tslash";
    let bytes: Vec<u8> = vec![0, 1, 2, 0x7f, 0x80, 0xff];
    let row = c
        .query_one(
            "select $1::int4, $2::int8, $3::text, $4::float8, $5::bool, $6::bytea, \
             (($7::text)::timestamptz at time zone 'UTC')::text, ($7::text)::timestamptz",
            &[
                &-7i32,
                &(1i64 << 40),
                &text,
                &-2.5f64,
                &true,
                &bytes,
                &"2024-03-01 00:00:58.123456+05:30",
            ],
        )
        .await
        .expect("typed parameters");
    assert_eq!(row.get::<_, i32>(0), -7);
    assert_eq!(row.get::<_, i64>(1), 1 << 40);
    assert_eq!(row.get::<_, String>(2), text);
    assert_eq!(row.get::<_, f64>(3), -2.5);
    assert!(row.get::<_, bool>(4));
    assert_eq!(row.get::<_, Vec<u8>>(5), bytes);
    assert_eq!(row.get::<_, String>(6), "2024-02-29 18:30:58.123456");
    let ts = row.get::<_, std::time::SystemTime>(7);
    assert_eq!(
        ts.duration_since(std::time::UNIX_EPOCH).unwrap(),
        Duration::from_micros(1_709_231_458_123_456)
    );

    // One prepared statement (Parse once), executed 50 times with different values.
    let st = c
        .prepare("select $1::int8 * 2, $2::text || '!', NOT $3::bool")
        .await
        .expect("prepare");
    assert_eq!(st.params(), &[Type::INT8, Type::TEXT, Type::BOOL]);
    for i in 0..50i64 {
        let r = c
            .query_one(&st, &[&i, &format!("v{i}"), &(i % 2 == 0)])
            .await
            .unwrap_or_else(|e| panic!("execution {i} of the prepared statement: {e}"));
        assert_eq!(r.get::<_, i64>(0), i * 2);
        assert_eq!(r.get::<_, String>(1), format!("v{i}!"));
        assert_eq!(r.get::<_, bool>(2), i % 2 != 0);
    }

    // Unnamed statement: query_typed sends Parse("")/Bind/Execute/Sync at once.
    for i in 0..5i32 {
        let rows = c
            .query_typed(
                "select $1 + 1, $2 || 'x'",
                &[(&(40 + i), Type::INT4), (&"a", Type::TEXT)],
            )
            .await
            .expect("unnamed statement");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].get::<_, i32>(0), 41 + i);
        assert_eq!(rows[0].get::<_, String>(1), "ax");
    }

    // A write through the extended protocol reports its row count.
    c.batch_execute("create table e (id int8, v text)")
        .await
        .unwrap();
    let n = c
        .execute(
            "insert into e select g, $1 from generate_series(1, $2::int8) g",
            &[&"p", &7i64],
        )
        .await
        .expect("insert with parameters");
    assert_eq!(n, 7);
}
