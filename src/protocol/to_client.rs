//! Messages the proxy writes to clients itself (encoded with pgwire's codec), and the
//! few fixed ones it puts in a reply stream as raw bytes.

use super::tags::backend;
use bytes::{BufMut, BytesMut};
use pgwire::messages::response::{ErrorResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{Authentication, BackendKeyData, ParameterStatus, SecretKey};
use pgwire::messages::Message;

/// ReadyForQuery of an idle connection, as PostgreSQL sends it after an autocommit
/// statement.
pub const READY_IDLE: [u8; 6] = [backend::READY_FOR_QUERY_TAG, 0, 0, 0, 5, b'I'];
/// ParseComplete.
pub const PARSE_COMPLETE: [u8; 5] = [backend::PARSE_COMPLETE_TAG, 0, 0, 0, 4];

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

/// An ErrorResponse whose body the server sent and the proxy held back.
pub fn error_with_body(buf: &mut BytesMut, body: &[u8]) {
    buf.put_u8(backend::ERROR_RESPONSE_TAG);
    buf.put_u32(4 + body.len() as u32);
    buf.extend_from_slice(body);
}

/// A message without a body (ParseComplete, BindComplete, CloseComplete, NoData).
pub fn empty(buf: &mut BytesMut, tag: u8) {
    buf.put_u8(tag);
    buf.put_u32(4);
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

/// NegotiateProtocolVersion: the newest minor version supported and the protocol
/// options (`_pq_.*`) declined.
pub fn negotiate_protocol_version(buf: &mut BytesMut, minor: i32, unsupported: &[String]) {
    let body_len = 4 + 4 + 4 + unsupported.iter().map(|s| s.len() + 1).sum::<usize>();
    buf.put_u8(b'v');
    buf.put_u32(body_len as u32);
    buf.put_i32(minor);
    buf.put_i32(unsupported.len() as i32);
    for s in unsupported {
        buf.put_slice(s.as_bytes());
        buf.put_u8(0);
    }
}
