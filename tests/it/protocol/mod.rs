//! Protocol fidelity through the proxy (DESIGN §3.1): anything that works against
//! PostgreSQL directly must work through pgwarden — simple and extended protocol, binary
//! formats, NULLs, large values and results, COPY both ways, LISTEN/NOTIFY, cancel
//! requests, errors with their SQLSTATE, transactions, the FunctionCall message,
//! ParameterStatus, and many clients sharing a small pool. One module per case; the
//! helpers they share are here.
//!
//! Every test starts its own PostgreSQL and proxy (`crate::common`). Clients are
//! tokio-postgres and psql; where a driver hides the wire (command tags, COPY bytes,
//! ReadyForQuery status, NULL vs empty), `common::Wire` speaks the protocol directly.

mod binary;
mod cancel;
mod copy;
mod errors;
mod extended;
mod function_call;
mod large_results;
mod large_values;
mod listen_notify;
mod nulls;
mod parameter_status;
mod pooled_sessions;
mod simple;
mod small_pool;
mod transactions;

use crate::common::{self, sqlstate, Env, Msg, Setup};
use std::time::Duration;
use tokio_postgres::SimpleQueryMessage;

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

fn expect_code<T: std::fmt::Debug>(r: Result<T, tokio_postgres::Error>, code: &str, what: &str) {
    match r {
        Ok(v) => panic!("{what}: expected SQLSTATE {code}, got success {v:?}"),
        Err(e) => assert_eq!(sqlstate(&e).as_deref(), Some(code), "{what}: {e:?}"),
    }
}
