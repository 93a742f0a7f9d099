//! COPY.
//!
//! tokio-postgres exposes COPY only through the `futures` Sink/Stream traits, and this
//! crate has no futures dev-dependency. So COPY IN through the driver uses
//! `BinaryCopyInWriter` (inherent async methods; the same Bind/Execute/Sync, CopyData,
//! CopyDone/Sync message sequence as a text copy_in), and text-format COPY in and out is
//! checked byte for byte with `Wire` and psql.

use super::*;
use crate::common::{fe, Wire};
use std::pin::pin;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

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
