//! Protocol fidelity through the proxy (DESIGN §3.1): anything that works against
//! PostgreSQL directly must work through pgwarden — simple and extended protocol, binary
//! formats, NULLs, large values and results, COPY both ways, LISTEN/NOTIFY, cancel
//! requests, errors with their SQLSTATE, transactions, the FunctionCall message,
//! ParameterStatus, and many clients sharing a small pool.
//!
//! Every test starts its own PostgreSQL and proxy (`crate::common`). Clients are
//! tokio-postgres and psql; where a driver hides the wire (command tags, COPY bytes,
//! ReadyForQuery status, NULL vs empty), `common::Wire` speaks the protocol directly.
//!
//! Note on COPY: tokio-postgres exposes COPY only through the `futures` Sink/Stream
//! traits, and this crate has no futures dev-dependency. So COPY IN through the driver
//! uses `BinaryCopyInWriter` (inherent async methods; the same Bind/Execute/Sync,
//! CopyData, CopyDone/Sync message sequence as a text copy_in), and text-format COPY in
//! and out is checked byte for byte with `Wire` and psql.

use crate::common::{self, fe, one_row, sqlstate, Env, Msg, Setup, Watched, Wire};
use std::collections::HashSet;
use std::pin::pin;
use std::time::Duration;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::{AsyncMessage, NoTls, SimpleQueryMessage};

/// Generous bound for things that must happen "soon" (not a speed claim).
const DEADLINE: Duration = Duration::from_secs(10);

async fn start_mode(pool_mode: &'static str) -> Env {
    common::start(Setup {
        pool_mode,
        ..Default::default()
    })
    .await
}

async fn start() -> Env {
    start_mode("transaction").await
}

type Rows = Vec<Vec<Option<String>>>;

/// Splits `simple_query` output into one (rows, affected-row count) per statement.
fn statements(msgs: &[SimpleQueryMessage]) -> Vec<(Rows, u64)> {
    let mut out = Vec::new();
    let mut rows = Vec::new();
    for m in msgs {
        match m {
            SimpleQueryMessage::Row(r) => {
                rows.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            SimpleQueryMessage::CommandComplete(n) => out.push((std::mem::take(&mut rows), *n)),
            _ => {}
        }
    }
    out
}

/// The single value of a one-row, one-column simple query.
async fn simple_value(c: &tokio_postgres::Client, sql: &str) -> Option<String> {
    let msgs = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let st = statements(&msgs);
    assert_eq!(st.len(), 1, "{sql}: one statement result");
    assert_eq!(st[0].0.len(), 1, "{sql}: one row");
    st[0].0[0][0].clone()
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

fn tags(msgs: &[Msg]) -> Vec<String> {
    msgs.iter().filter_map(Msg::command_tag).collect()
}

fn errors(msgs: &[Msg]) -> Vec<String> {
    msgs.iter().filter_map(Msg::sqlstate).collect()
}

/// The transaction status of the (last) ReadyForQuery.
fn ready_status(msgs: &[Msg]) -> char {
    let z = msgs
        .iter()
        .rev()
        .find(|m| m.tag == b'Z')
        .expect("a ReadyForQuery");
    z.body[0] as char
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(bytes))
}

fn expect_code<T: std::fmt::Debug>(r: Result<T, tokio_postgres::Error>, code: &str, what: &str) {
    match r {
        Ok(v) => panic!("{what}: expected SQLSTATE {code}, got success {v:?}"),
        Err(e) => assert_eq!(sqlstate(&e).as_deref(), Some(code), "{what}: {e:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// 1. Simple protocol
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// 2. Extended protocol
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// 3. Binary results
// ---------------------------------------------------------------------------------------

/// tokio-postgres asks for binary results; every value must decode exactly, and be the
/// same as from PostgreSQL directly (a proxy that re-encodes or truncates shows here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_results_decode_exactly() {
    let env = start().await;
    let sql = "select (-32768)::int2, 2147483647::int4, (-9223372036854775808)::int8, \
               3.25::float4, 0.1::float8 + 0.2::float8, '-Infinity'::float8, \
               12345678901234567890.000000001::numeric::text, '\\x00ff10'::bytea, false, \
               'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid::text, \
               array[1, -2, 2147483647]::int4[], '{}'::int4[], array['a', NULL, 'c']::text[]";
    let via_proxy = env
        .connect()
        .await
        .query_one(sql, &[])
        .await
        .expect("through the proxy");
    let direct = env
        .direct()
        .await
        .query_one(sql, &[])
        .await
        .expect("direct");

    for row in [&via_proxy, &direct] {
        assert_eq!(row.columns()[0].type_(), &Type::INT2);
        assert_eq!(row.get::<_, i16>(0), i16::MIN);
        assert_eq!(row.get::<_, i32>(1), i32::MAX);
        assert_eq!(row.get::<_, i64>(2), i64::MIN);
        assert_eq!(row.get::<_, f32>(3), 3.25);
        assert_eq!(row.get::<_, f64>(4).to_bits(), (0.1f64 + 0.2f64).to_bits());
        assert_eq!(row.get::<_, f64>(5), f64::NEG_INFINITY);
        assert_eq!(row.get::<_, String>(6), "12345678901234567890.000000001");
        assert_eq!(row.get::<_, Vec<u8>>(7), vec![0x00, 0xff, 0x10]);
        assert!(!row.get::<_, bool>(8));
        assert_eq!(
            row.get::<_, String>(9),
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
        );
        assert_eq!(row.get::<_, Vec<i32>>(10), vec![1, -2, i32::MAX]);
        assert_eq!(row.get::<_, Vec<i32>>(11), Vec::<i32>::new());
        assert_eq!(
            row.get::<_, Vec<Option<String>>>(12),
            vec![s("a"), None, s("c")]
        );
    }
}

// ---------------------------------------------------------------------------------------
// 4. NULLs
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// 5. Large values
// ---------------------------------------------------------------------------------------

/// 1 MB text and bytea values in both directions: messages far larger than a socket
/// buffer, split across many reads, must arrive byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_round_trip() {
    const MB: usize = 1 << 20;
    let env = start().await;
    let c = env.connect().await;

    // Deterministic, not compressible into something trivial.
    let mut x: u32 = 12345;
    let mut next = || {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        (x >> 16) as u8
    };
    let text: String = (0..MB).map(|_| (b' ' + next() % 95) as char).collect();
    let bytes: Vec<u8> = (0..MB).map(|_| next()).collect();

    c.batch_execute("create table big (id int, t text, b bytea)")
        .await
        .unwrap();
    c.execute("insert into big values (1, $1, $2)", &[&text, &bytes])
        .await
        .expect("1 MB parameters");

    // The server got exactly what was sent...
    let row = c
        .query_one(
            "select length(t), length(b), encode(sha256(convert_to(t, 'UTF8')), 'hex'), \
             encode(sha256(b), 'hex') from big",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0) as usize, MB);
    assert_eq!(row.get::<_, i32>(1) as usize, MB);
    assert_eq!(row.get::<_, String>(2), sha256_hex(text.as_bytes()));
    assert_eq!(row.get::<_, String>(3), sha256_hex(&bytes));

    // ...and it comes back exactly, in binary format...
    let row = c.query_one("select t, b from big", &[]).await.unwrap();
    assert!(
        row.get::<_, String>(0) == text,
        "1 MB text differs after the round trip"
    );
    assert!(
        row.get::<_, Vec<u8>>(1) == bytes,
        "1 MB bytea differs after the round trip"
    );

    // ...and in text format (bytea as 2 MB of hex).
    let st = statements(&c.simple_query("select t, b from big").await.unwrap());
    let got = &st[0].0[0];
    assert!(
        got[0].as_deref() == Some(text.as_str()),
        "1 MB text differs in the simple protocol"
    );
    assert!(
        got[1].as_deref() == Some(format!("\\x{}", hex(&bytes)).as_str()),
        "bytea hex differs"
    );

    let v = simple_value(&c, "select repeat('x', 1048576)")
        .await
        .expect("not NULL");
    assert_eq!(v.len(), MB);
    assert!(v.bytes().all(|b| b == b'x'));
}

// ---------------------------------------------------------------------------------------
// 6. Large results
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// 7. COPY
// ---------------------------------------------------------------------------------------

const COPY_ROWS: i32 = 10_000;

/// The text-format line COPY produces for row `i` of the copy tests.
fn copy_line(i: i32) -> String {
    // A tab inside a value is escaped as \t; NULL is \N.
    let note = if i % 7 == 0 {
        "\\N".to_string()
    } else {
        format!("note ü {i}")
    };
    format!("{i}\tname {i}\\twith tab\t{note}\n")
}

/// Reads a whole `COPY ... TO STDOUT` through the wire client.
async fn wire_copy_out(w: &mut Wire, sql: &str) -> Vec<u8> {
    w.send(&fe::query(sql)).await;
    let mut data = Vec::new();
    let msgs = loop {
        let m = w.recv().await;
        match m.tag {
            b'd' => data.extend_from_slice(&m.body),
            b'H' | b'c' => {}
            _ => {
                let mut rest = vec![m];
                if rest[0].tag != b'Z' {
                    rest.extend(w.until_ready().await);
                }
                break rest;
            }
        }
    };
    assert_eq!(
        tags(&msgs),
        [format!("COPY {COPY_ROWS}")],
        "{}",
        common::describe_all(&msgs)
    );
    data
}

/// Text-format COPY FROM STDIN and COPY TO STDOUT on the wire (simple protocol, as psql
/// and most drivers do it): data split across CopyData messages at arbitrary points,
/// read back byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_text_in_and_out_on_the_wire() {
    let env = start().await;
    let mut w = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    w.simple("create table copy_w (id int primary key, name text, note text)")
        .await;
    let want: String = (1..=COPY_ROWS).map(copy_line).collect();

    w.send(&fe::query("copy copy_w from stdin")).await;
    let first = w.recv().await;
    assert_eq!(first.tag, b'G', "CopyInResponse, got {}", first.describe());
    for chunk in want.as_bytes().chunks(777) {
        w.send(&fe::copy_data(chunk)).await;
    }
    w.send(&fe::copy_done()).await;
    let msgs = w.until_ready().await;
    assert_eq!(
        tags(&msgs),
        [format!("COPY {COPY_ROWS}")],
        "{}",
        common::describe_all(&msgs)
    );
    assert_eq!(ready_status(&msgs), 'I');

    let got = wire_copy_out(&mut w, "copy (select * from copy_w order by id) to stdout").await;
    assert_eq!(got.len(), want.len());
    assert!(
        got == want.as_bytes(),
        "COPY TO STDOUT bytes differ from what COPY FROM STDIN loaded"
    );

    // The server has the rows as values (the escapes were decoded), not as raw lines.
    let c = env.connect().await;
    let row = c
        .query_one(
            "select count(*), count(note), max(name) from copy_w where id <= 9",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 9);
    assert_eq!(row.get::<_, i64>(1), 8, "row 7 has a NULL note");
    assert_eq!(row.get::<_, String>(2), "name 9\twith tab");
}

/// COPY FROM STDIN through tokio-postgres: Bind/Execute/Sync, then CopyData, then
/// CopyDone + Sync, then (when the statement is dropped) Close + Sync. The first Sync
/// arrives while the server is in COPY mode, and PostgreSQL ignores it: one
/// ReadyForQuery comes back for those two Syncs. The data must land, and the client's
/// session must go on exactly as against PostgreSQL.
async fn copy_in_with_tokio_postgres(env: &Env) {
    let c = env.connect().await;
    c.batch_execute("create table copy_t (id int primary key, name text, note text)")
        .await
        .unwrap();

    let sink = c
        .copy_in("copy copy_t (id, name, note) from stdin binary")
        .await
        .expect("copy in starts");
    let mut writer = pin!(BinaryCopyInWriter::new(
        sink,
        &[Type::INT4, Type::TEXT, Type::TEXT]
    ));
    for i in 1..=COPY_ROWS {
        let name = format!("name {i}\twith tab");
        let note = (i % 7 != 0).then(|| format!("note ü {i}"));
        writer
            .as_mut()
            .write(&[&i, &name, &note])
            .await
            .expect("copy row");
    }
    let n = writer.as_mut().finish().await.expect("copy in finishes");
    assert_eq!(n, COPY_ROWS as u64);

    // What landed, read back as text-format COPY TO STDOUT by another client.
    let mut w = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    let got = wire_copy_out(&mut w, "copy (select * from copy_t order by id) to stdout").await;
    let want: String = (1..=COPY_ROWS).map(copy_line).collect();
    assert!(
        got == want.as_bytes(),
        "COPY TO STDOUT bytes differ from what copy_in wrote"
    );

    // The same session goes on working after the copy.
    let count: i64 = c
        .query_one("select count(*) from copy_t", &[])
        .await
        .unwrap_or_else(|e| panic!("the copying client's next query: {e:?}"))
        .get(0);
    assert_eq!(count, COPY_ROWS as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_with_tokio_postgres_transaction_mode() {
    copy_in_with_tokio_postgres(&start_mode("transaction").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_with_tokio_postgres_session_mode() {
    copy_in_with_tokio_postgres(&start_mode("session").await).await;
}

/// tokio-postgres' COPY IN message sequence by hand, every reply checked: what the
/// client gets must be what PostgreSQL sends, in the same order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_extended_protocol_reply_sequence() {
    let env = start().await;
    let mut w = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    w.simple("create table copy_x (id int)").await;

    let mut req = fe::parse("s1", "copy copy_x from stdin");
    req.extend(fe::describe_statement("s1"));
    req.extend(fe::sync());
    w.send(&req).await;
    assert_eq!(
        common::describe_all(&w.until_ready().await),
        "1 t n Z(I)",
        "Parse/Describe/Sync"
    );

    let mut req = fe::bind("", "s1", &[]);
    req.extend(fe::execute("", 0));
    req.extend(fe::sync()); // sent before the server is in COPY mode; it will be ignored
    w.send(&req).await;
    assert_eq!(w.recv().await.describe(), "2", "BindComplete");
    assert_eq!(w.recv().await.describe(), "G", "CopyInResponse");

    let mut req = fe::copy_data(b"1\n2\n3\n");
    req.extend(fe::copy_done());
    req.extend(fe::sync());
    w.send(&req).await;
    assert_eq!(
        common::describe_all(&w.until_ready().await),
        "C(COPY 3) Z(I)",
        "end of COPY"
    );

    let mut req = fe::close_statement("s1");
    req.extend(fe::sync());
    w.send(&req).await;
    assert_eq!(
        common::describe_all(&w.until_ready().await),
        "3 Z(I)",
        "Close/Sync after the COPY"
    );

    let msgs = w.simple("select count(*) from copy_x").await;
    assert_eq!(
        common::describe_all(&msgs),
        "T D C(SELECT 1) Z(I)",
        "the next query"
    );
    assert_eq!(msgs[1].data_row(), Some(vec![Some(b"3".to_vec())]));
}

/// psql's \copy (COPY ... FROM STDIN / TO STDOUT under the hood), with files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_with_psql() {
    let env = start().await;
    let dir = tempfile::TempDir::new().unwrap();
    let input = dir.path().join("in.txt");
    let output = dir.path().join("out.txt");
    let want: String = (1..=COPY_ROWS).map(copy_line).collect();
    std::fs::write(&input, &want).unwrap();

    let dsn = env.dsn("app", "app", "app");
    let mut cmd = common::psql(&dsn);
    cmd.arg("-c")
        .arg("create table copy_p (id int primary key, name text, note text)")
        .arg("-c")
        .arg(format!("\\copy copy_p from '{}'", input.display()))
        .arg("-c")
        .arg(format!(
            "\\copy (select * from copy_p order by id) to '{}'",
            output.display()
        ));
    let (ok, out, err) = common::run_cmd_async(cmd).await;
    assert!(ok, "psql failed: {out}\n{err}");
    assert!(
        out.contains(&format!("COPY {COPY_ROWS}")),
        "psql output: {out}"
    );

    let got = std::fs::read(&output).unwrap();
    assert!(
        got == want.as_bytes(),
        "\\copy out differs from what \\copy in loaded"
    );
    let direct = env.direct().await;
    let n: i64 = direct
        .query_one("select count(*) from copy_p where note is null", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, (COPY_ROWS / 7) as i64, "\\N became NULL on the server");
}

/// A bad row makes COPY fail with 22P02 (nothing is loaded), in both protocols, and the
/// same session then works. With the extended protocol the client sends Sync before
/// and after the copy data (as tokio-postgres does); the server ignores the first, so
/// exactly one ReadyForQuery must come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_bad_row_fails_with_22p02_and_session_recovers() {
    let env = start().await;
    let mut w = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    w.simple("create table copy_b (id int, v text)").await;
    let data = b"1\tok\nnot-a-number\tbad\n3\tok\n";

    // Simple protocol.
    w.send(&fe::query("copy copy_b from stdin")).await;
    assert_eq!(w.recv().await.tag, b'G');
    w.send(&fe::copy_data(data)).await;
    w.send(&fe::copy_done()).await;
    let msgs = w.until_ready().await;
    assert_eq!(errors(&msgs), ["22P02"], "{}", common::describe_all(&msgs));
    assert_eq!(ready_status(&msgs), 'I');
    let msgs = w.simple("select count(*) from copy_b").await;
    assert_eq!(
        msgs.iter().find_map(Msg::data_row),
        Some(vec![Some(b"0".to_vec())])
    );

    // Extended protocol, tokio-postgres' message sequence.
    let mut req = fe::parse("", "copy copy_b from stdin");
    req.extend(fe::bind("", "", &[]));
    req.extend(fe::execute("", 0));
    req.extend(fe::sync());
    w.send(&req).await;
    let m = w.recv().await;
    assert_eq!(m.tag, b'1', "ParseComplete, got {}", m.describe());
    let m = w.recv().await;
    assert_eq!(m.tag, b'2', "BindComplete, got {}", m.describe());
    let m = w.recv().await;
    assert_eq!(m.tag, b'G', "CopyInResponse, got {}", m.describe());
    let mut rest = fe::copy_data(data);
    rest.extend(fe::copy_done());
    rest.extend(fe::sync());
    w.send(&rest).await;
    let msgs = w.until_ready().await;
    assert_eq!(errors(&msgs), ["22P02"], "{}", common::describe_all(&msgs));

    // Exactly one ReadyForQuery was owed: the next reply is for the next query.
    let msgs = w.simple("select 41 + 1").await;
    assert_eq!(
        msgs.first().map(|m| m.tag),
        Some(b'T'),
        "{}",
        common::describe_all(&msgs)
    );
    assert_eq!(
        msgs.iter().find_map(Msg::data_row),
        Some(vec![Some(b"42".to_vec())])
    );
}

// ---------------------------------------------------------------------------------------
// 8. LISTEN / NOTIFY
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// 9. Cancel
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// 10. Errors and recovery
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// 11. Transactions and savepoints
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// 12. FunctionCall ('F')
// ---------------------------------------------------------------------------------------

/// psql's \lo_import and \lo_export go through libpq's fastpath: FunctionCall messages
/// (lo_creat, lo_open, lowrite/loread, lo_close) inside a transaction psql opens.
async fn large_object_round_trip(env: &Env) {
    let dir = tempfile::TempDir::new().unwrap();
    let input = dir.path().join("in.bin");
    let output = dir.path().join("out.bin");
    let script = dir.path().join("lo.sql");
    // ~20 kB of every byte value: several 8 kB lowrite/loread calls.
    let data: Vec<u8> = (0..20_000u32)
        .map(|i| (i.wrapping_mul(7) % 256) as u8)
        .collect();
    std::fs::write(&input, &data).unwrap();
    std::fs::write(
        &script,
        format!(
            "\\lo_import '{}'\n\\lo_export :LASTOID '{}'\n",
            input.display(),
            output.display()
        ),
    )
    .unwrap();
    let mut cmd = common::psql(&env.dsn("app", "app", "app"));
    cmd.arg("-f").arg(&script);
    let (ok, out, err) = common::run_cmd_async(cmd).await;
    assert!(ok, "psql failed: {out}\n{err}");
    assert!(out.contains("lo_import "), "psql output: {out}");

    let got = std::fs::read(&output).expect("\\lo_export wrote the file");
    assert_eq!(got.len(), data.len());
    assert!(
        got == data,
        "exported large object differs from the imported file"
    );

    // Stored and committed on the server.
    let direct = env.direct().await;
    let row = direct
        .query_one(
            "select (select count(*) from pg_largeobject_metadata), \
                    (select sum(length(data))::int8 from pg_largeobject)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
    assert_eq!(row.get::<_, Option<i64>>(1), Some(data.len() as i64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_call_via_psql_large_objects_session_mode() {
    large_object_round_trip(&start_mode("session").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_call_via_psql_large_objects_transaction_mode() {
    large_object_round_trip(&start_mode("transaction").await).await;
}

// ---------------------------------------------------------------------------------------
// 13. ParameterStatus and session settings
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// 14. Many clients, small pool
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// More transparency cases (DESIGN §3.1): session state under transaction pooling,
// COPY bookkeeping, startup options
// ---------------------------------------------------------------------------------------

async fn start_pool_of(size: usize) -> Env {
    let tweak: fn(&mut pgwarden::config::Config) = match size {
        1 => |c| {
            c.pool.size = 1;
            c.pool.checkout_timeout_ms = 3_000;
        },
        2 => |c| c.pool.size = 2,
        _ => unreachable!("pool sizes used here: 1, 2"),
    };
    common::start(Setup {
        tweak,
        ..Default::default()
    })
    .await
}

/// Makes the pool (size 2) hold two server connections, and checks it does.
async fn open_two_server_connections(env: &Env) {
    let x = env.connect().await;
    let y = env.connect().await;
    x.batch_execute("BEGIN").await.unwrap();
    y.batch_execute("select 1").await.unwrap(); // x holds the first: y needs a second
    x.batch_execute("COMMIT").await.unwrap();
    let n: i64 = env
        .direct()
        .await
        .query_one(
            "select count(*) from pg_stat_activity where usename = 'app' and application_name <> 'pgwarden-monitor'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2, "two server connections in the pool");
}

/// Runs `step` 6 times alone and 6 times while another client holds a server connection
/// in an open transaction. Whatever order the pool hands out connections in, the
/// stepping client lands on both of the two.
async fn on_both_servers<F, Fut>(env: &Env, mut step: F)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for i in 0..6 {
        step(i).await;
    }
    let holder = env.connect().await;
    for i in 6..12 {
        holder.batch_execute("BEGIN").await.unwrap();
        step(i).await;
        holder.batch_execute("COMMIT").await.unwrap();
    }
}

/// An extended-protocol COPY FROM STDIN (Bind/Execute/Sync, CopyData, CopyDone + Sync,
/// as tokio-postgres sends it) owes one ReadyForQuery for its two Syncs. Once it has
/// come and the client is idle, the server connection must go back to the pool: with
/// pool.size = 1 another client must get it (instead of 53300 after the checkout timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_gives_the_server_back_in_transaction_mode() {
    let env = start_pool_of(1).await;
    let mut a = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    a.simple("create table copy_r (id int)").await;
    let mut req = fe::parse("", "copy copy_r from stdin");
    req.extend(fe::bind("", "", &[]));
    req.extend(fe::execute("", 0));
    req.extend(fe::sync());
    w_expect(&mut a, &req, &["1", "2", "G"]).await;
    let mut req = fe::copy_data(b"1\n2\n3\n");
    req.extend(fe::copy_done());
    req.extend(fe::sync());
    a.send(&req).await;
    assert_eq!(
        common::describe_all(&a.until_ready().await),
        "C(COPY 3) Z(I)"
    );

    // a is idle (and still connected); b needs the one server connection.
    let b = env.connect().await;
    let n: i64 = b
        .query_one("select count(*) from copy_r", &[])
        .await
        .unwrap_or_else(|e| {
            panic!(
                "another client after a finished COPY IN: {e} ({:?})",
                sqlstate(&e)
            )
        })
        .get(0);
    assert_eq!(n, 3);
    let msgs = a.simple("select count(*) from copy_r").await;
    assert_eq!(
        msgs.iter().find_map(Msg::data_row),
        Some(vec![Some(b"3".to_vec())])
    );
}

/// Sends `req` and checks the next replies, one by one.
async fn w_expect(w: &mut Wire, req: &[u8], replies: &[&str]) {
    w.send(req).await;
    for want in replies {
        assert_eq!(&w.recv().await.describe(), want);
    }
}

/// A statement prepared with protocol Parse keeps working when the client lands on
/// another server connection ("re-prepared on demand").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statement_follows_the_client_across_servers() {
    let env = start_pool_of(2).await;
    open_two_server_connections(&env).await;
    let a = env.connect().await;
    let st = a
        .prepare("select $1::int * 2, pg_backend_pid()")
        .await
        .expect("prepare");
    let pids = std::sync::Mutex::new(HashSet::new());
    on_both_servers(&env, |i| {
        let (a, st, pids) = (&a, &st, &pids);
        async move {
            let i = i as i32;
            let r = a.query_one(st, &[&i]).await.unwrap_or_else(|e| {
                panic!(
                    "execution {i} of the prepared statement: {e} ({:?})",
                    sqlstate(&e)
                )
            });
            assert_eq!(r.get::<_, i32>(0), i * 2);
            pids.lock().unwrap().insert(r.get::<_, i32>(1));
        }
    })
    .await;
    assert_eq!(
        pids.lock().unwrap().len(),
        2,
        "the client ran on both server connections"
    );
}

/// SQL-level PREPARE pins the client to its server connection (DESIGN §3.1): EXECUTE
/// keeps working in later transactions, always on that one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_prepare_pins_the_client_to_its_server() {
    let env = start_pool_of(2).await;
    open_two_server_connections(&env).await;
    let a = env.connect().await;
    a.batch_execute("PREPARE twice(int) AS SELECT $1 * 2, pg_backend_pid()")
        .await
        .expect("PREPARE");
    let pids = std::sync::Mutex::new(HashSet::new());
    for i in 0..12 {
        let sql = format!("EXECUTE twice({i})");
        let r = a
            .simple_query(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e} ({:?})", sqlstate(&e)));
        let row = &statements(&r)[0].0[0];
        assert_eq!(row[0], Some((i * 2).to_string()));
        pids.lock().unwrap().insert(row[1].clone());
    }
    assert_eq!(
        pids.lock().unwrap().len(),
        1,
        "a pinned client stays on one server"
    );
    // The other connection still serves everyone else.
    let b = env.connect().await;
    b.simple_query("select 1").await.expect("unpinned client");
}

/// The session's TimeZone and the server backend it ran on.
async fn timezone_and_pid(c: &tokio_postgres::Client) -> (String, String) {
    let r = c
        .simple_query("select current_setting('TimeZone'), pg_backend_pid()")
        .await
        .expect("timezone query");
    let row = &statements(&r)[0].0[0];
    (row[0].clone().unwrap(), row[1].clone().unwrap())
}

/// A SET outside a transaction is session state: it stays with its client on every
/// server connection it lands on, and never shows up in another client's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_stays_with_its_client() {
    let env = start_pool_of(2).await;
    open_two_server_connections(&env).await;
    let default_tz: String = env
        .direct()
        .await
        .query_one("show timezone", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(default_tz, "Pacific/Chatham");

    let a = env.connect().await;
    a.batch_execute("SET TimeZone = 'Pacific/Chatham'")
        .await
        .unwrap();

    // Another client, on either server connection, sees the default.
    let b = env.connect().await;
    let pids = std::sync::Mutex::new(HashSet::new());
    on_both_servers(&env, |i| {
        let (b, pids, default_tz) = (&b, &pids, &default_tz);
        async move {
            let (tz, pid) = timezone_and_pid(b).await;
            assert_eq!(
                &tz, default_tz,
                "round {i}: another client's SET leaked into this session"
            );
            pids.lock().unwrap().insert(pid);
        }
    })
    .await;
    assert_eq!(
        pids.lock().unwrap().len(),
        2,
        "b ran on both server connections"
    );

    // The client that SET it keeps it on either server connection.
    pids.lock().unwrap().clear();
    on_both_servers(&env, |i| {
        let (a, pids) = (&a, &pids);
        async move {
            let (tz, pid) = timezone_and_pid(a).await;
            assert_eq!(
                tz, "Pacific/Chatham",
                "round {i}: the client's SET was lost"
            );
            pids.lock().unwrap().insert(pid);
        }
    })
    .await;
    assert_eq!(
        pids.lock().unwrap().len(),
        2,
        "a ran on both server connections"
    );
}

/// A request pipelined behind another counts only at its own ReadyForQuery: a SET
/// rolled back with its transaction, sent while an earlier request is still running, is
/// not taken for committed when the earlier one's ReadyForQuery arrives (tokio-postgres
/// sends a dropped statement's Close+Sync just this way, ahead of the next Query), and a
/// SET pipelined behind a failing Query is kept. Checked after another client has used
/// the one server connection, so the session's settings must be re-applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sets_pipelined_behind_another_request_count_at_their_own_reply() {
    let env = start_pool_of(1).await;
    let mut w = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    let mut other = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    w.simple("set myapp.tenant = 'alpha'").await;
    let rolled_back = || fe::query("begin; set myapp.tenant = 'gamma'; rollback");
    let cases = [
        (fe::query("select pg_sleep(0.02)"), rolled_back(), "alpha"),
        (
            [fe::close_statement("nothing"), fe::sync()].concat(),
            rolled_back(),
            "alpha",
        ),
        (
            fe::query("select 1/0"),
            fe::query("set myapp.tenant = 'delta'"),
            "delta",
        ),
    ];
    for (first, later, want) in cases {
        w.send(&[first, later].concat()).await;
        w.until_ready().await;
        w.until_ready().await;
        // The other client takes the server connection over with its own value.
        other.simple("set myapp.tenant = 'other'").await;
        let row = one_row(&mut other, "select current_setting('myapp.tenant')").await;
        assert_eq!(row[0].as_deref(), Some(&b"other"[..]));
        let row = one_row(&mut w, "select current_setting('myapp.tenant')").await;
        assert_eq!(
            String::from_utf8_lossy(row[0].as_deref().unwrap_or_default()),
            want
        );
    }
}

/// A SET in a block that rolls back to a savepoint after an error and then commits is
/// committed: it follows its client, and does not leak to the next client of the server
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_committed_after_rollback_to_savepoint_stays_with_its_client() {
    let env = start_pool_of(1).await;
    let mut w = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    let mut other = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    w.simple("begin; set myapp.tenant = 's1'; savepoint a; select 1/0")
        .await;
    w.simple("rollback to a; commit").await;
    let row = one_row(
        &mut other,
        "select coalesce(current_setting('myapp.tenant', true), '')",
    )
    .await;
    assert_eq!(row[0].as_deref(), Some(&b""[..]), "a SET leaked");
    let row = one_row(&mut w, "select current_setting('myapp.tenant')").await;
    assert_eq!(row[0].as_deref(), Some(&b"s1"[..]));
}

/// A SET under a savepoint that ROLLBACK TO undoes is gone, as PostgreSQL has it, though
/// the block commits: the client's next query, wherever it runs, does not see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_undone_by_rollback_to_savepoint_is_gone() {
    let env = start_pool_of(2).await;
    let mut w = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    let mut other = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    w.simple("begin; savepoint a; set myapp.tenant = 's1'")
        .await;
    w.simple("rollback to a; commit").await;
    // The other client holds a connection (the one w used, if w let it go), so w's
    // next query runs on the pool's other one unless w kept its own.
    other.simple("begin").await;
    let row = one_row(
        &mut w,
        "select coalesce(current_setting('myapp.tenant', true), '')",
    )
    .await;
    assert_eq!(
        row[0].as_deref(),
        Some(&b""[..]),
        "the undone SET came back"
    );
    other.simple("commit").await;
    let row = one_row(
        &mut other,
        "select coalesce(current_setting('myapp.tenant', true), '')",
    )
    .await;
    assert_eq!(row[0].as_deref(), Some(&b""[..]), "a SET leaked");
}

/// A cancel of a request that still waits for a server connection (its pool is
/// exhausted) is answered at once with 57014, and the request never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_while_waiting_for_a_server_answers_at_once() {
    let env = start_pool_of(1).await;
    env.direct()
        .await
        .batch_execute("create table waited (id int); grant all on waited to app;")
        .await
        .unwrap();
    let holder = env.connect().await;
    let client = env.connect().await;
    // The pool's only connection stays with this open transaction.
    holder.batch_execute("begin; select 1").await.unwrap();
    let token = client.cancel_token();
    let insert = client.simple_query("insert into waited values (1)");
    // Cancels go on until the insert ends: the pool also counts the proxy's first,
    // non-waiting try as a waiter, and a cancel landing then finds nothing to cancel (as
    // one landing between two queries does in PostgreSQL). Only a cancel of the wait can
    // end the insert before the holder commits.
    let canceller = async {
        let pools = &env.proxy.shared.pools;
        common::wait_for("the insert waiting for a connection", DEADLINE, || {
            let waiting = pools.all().iter().any(|(_, e)| e.pool.status().waiting > 0);
            async move { waiting.then_some(()) }
        })
        .await;
        loop {
            token
                .cancel_query(NoTls)
                .await
                .expect("cancel request sent");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let result = tokio::select! {
        r = insert => r,
        never = canceller => never,
    };
    // Without the cancel it would fail after pool.checkout_timeout_ms with 53300.
    expect_code(result, "57014", "insert cancelled while waiting");
    holder.batch_execute("commit").await.unwrap();
    let n: i64 = client
        .query_one("select count(*) from waited", &[])
        .await
        .expect("client works after the cancel")
        .get(0);
    assert_eq!(n, 0, "the cancelled insert ran");
}

/// `options=-c name=value` in the connection string (libpq and most drivers support
/// it) sets the parameter for the session, as it does against PostgreSQL.
async fn startup_options_reach_the_session(env: &Env) {
    let opts = "options=-c%20TimeZone%3DAsia%2FKolkata";
    // Directly, the same DSN form works.
    let (direct, conn) = tokio_postgres::connect(
        &format!("{}?{opts}", env.cluster.primary.dsn("app", "app", "app")),
        NoTls,
    )
    .await
    .expect("direct connect with options");
    tokio::spawn(conn);
    assert_eq!(
        simple_value(&direct, "show timezone").await,
        s("Asia/Kolkata")
    );

    let (c, conn) =
        tokio_postgres::connect(&format!("{}&{opts}", env.dsn("app", "app", "app")), NoTls)
            .await
            .expect("connect through the proxy with options");
    tokio::spawn(conn);
    assert_eq!(simple_value(&c, "show timezone").await, s("Asia/Kolkata"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_options_in_transaction_mode() {
    startup_options_reach_the_session(&start_mode("transaction").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_options_in_session_mode() {
    startup_options_reach_the_session(&start_mode("session").await).await;
}
