//! Builders for the messages the proxy writes itself, encoded with pgwire's codec.

use bytes::{BufMut, BytesMut};
use pgwire::messages::extendedquery::{
    Bind, Close, Execute, Parse, Sync, TARGET_TYPE_BYTE_STATEMENT,
};
use pgwire::messages::response::{ErrorResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::simplequery::Query;
use pgwire::messages::startup::{Authentication, BackendKeyData, ParameterStatus, SecretKey};
use pgwire::messages::Message;

fn encode(buf: &mut BytesMut, m: &impl Message) {
    // Encoding only fails on lengths above pgwire's limits, which these small
    // messages cannot reach.
    m.encode(buf).expect("encode small protocol message");
}

/// An ErrorResponse with severity, SQLSTATE and message.
pub fn error(buf: &mut BytesMut, severity: &str, code: &str, message: &str) {
    let fields = vec![
        (b'S', severity.to_string()),
        (b'V', severity.to_string()),
        (b'C', code.to_string()),
        (b'M', message.to_string()),
    ];
    encode(buf, &ErrorResponse::new(fields));
}

pub fn fatal(code: &str, message: &str) -> BytesMut {
    let mut b = BytesMut::new();
    error(&mut b, "FATAL", code, message);
    b
}

pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    let status = match status {
        b'T' => TransactionStatus::Transaction,
        b'E' => TransactionStatus::Error,
        _ => TransactionStatus::Idle,
    };
    encode(buf, &ReadyForQuery::new(status));
}

pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    encode(
        buf,
        &pgwire::messages::response::CommandComplete::new(tag.into()),
    );
}

pub fn auth(buf: &mut BytesMut, a: &Authentication) {
    encode(buf, a);
}

pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    encode(buf, &ParameterStatus::new(name.into(), value.into()));
}

pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    encode(buf, &BackendKeyData::new(pid, SecretKey::I32(secret)));
}

pub fn query(buf: &mut BytesMut, sql: &str) {
    encode(buf, &Query::new(sql.into()));
}

/// Close of a named prepared statement (a no-op on the server when it does not exist).
pub fn close_statement(buf: &mut BytesMut, name: &str) {
    encode(
        buf,
        &Close::new(TARGET_TYPE_BYTE_STATEMENT, Some(name.into())),
    );
}

/// Parse of a named statement, parameter types left to the server.
pub fn parse(buf: &mut BytesMut, name: &str, sql: &str) {
    encode(buf, &Parse::new(Some(name.into()), sql.into(), Vec::new()));
}

/// Bind (no parameters, text results), Execute and Sync of a named statement.
pub fn execute_statement(buf: &mut BytesMut, name: &str) {
    encode(
        buf,
        &Bind::new(None, Some(name.into()), Vec::new(), Vec::new(), Vec::new()),
    );
    encode(buf, &Execute::new(None, 0));
    encode(buf, &Sync::new());
}

/// The 16-byte CancelRequest packet sent to a server.
pub fn cancel_request(pid: i32, secret: i32) -> [u8; 16] {
    let mut b = [0u8; 16];
    let mut w = &mut b[..];
    w.put_i32(16);
    w.put_i32(80877102);
    w.put_i32(pid);
    w.put_i32(secret);
    b
}

/// Reads the SQLSTATE and message of an ErrorResponse/NoticeResponse body.
pub fn error_fields(body: &[u8]) -> (String, String) {
    let mut code = String::new();
    let mut msg = String::new();
    let mut rest = body;
    while let Some((&t, tail)) = rest.split_first() {
        if t == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        let v = String::from_utf8_lossy(&tail[..end]).into_owned();
        match t {
            b'C' => code = v,
            b'M' => msg = v,
            _ => {}
        }
        rest = tail.get(end + 1..).unwrap_or(&[]);
    }
    (code, msg)
}
