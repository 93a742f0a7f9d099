//! Messages the proxy writes to servers itself, with postgres-protocol's frontend
//! writers, and the splicing of a client's message under another statement name.

use bytes::{BufMut, BytesMut};
use postgres_protocol::message::frontend;
use postgres_protocol::IsNull;
use std::ops::Range;

// The writers fail only on a NUL inside a string or a count past i16: the names here
// are the proxy's own (hex digits) and the SQL comes from a client message, where it
// ended at its first NUL.
const WELL_FORMED: &str = "statement names and SQL hold no NUL";

/// A simple Query.
pub fn query(buf: &mut BytesMut, sql: &str) {
    frontend::query(sql, buf).expect(WELL_FORMED);
}

/// Parse of a named statement with the given parameter types (0: left to the server).
pub fn parse(buf: &mut BytesMut, name: &str, sql: &str, types: &[u32]) {
    frontend::parse(name, sql, types.iter().copied(), buf).expect(WELL_FORMED);
}

/// Close of a named prepared statement (a no-op on the server when it does not exist).
pub fn close_statement(buf: &mut BytesMut, name: &str) {
    frontend::close(b'S', name, buf).expect(WELL_FORMED);
}

/// Bind (no parameters, text results), Execute and Sync of a named statement.
pub fn execute_statement(buf: &mut BytesMut, name: &str) {
    bind(buf, name, &[], &[], 0);
    frontend::execute("", 0, buf).expect(WELL_FORMED);
    frontend::sync(buf);
}

/// Bind of the unnamed portal to statement `name`: parameters in text, the values
/// being `ranges` of `text`, and `result_formats` result columns in text (0: all).
pub fn bind(
    buf: &mut BytesMut,
    name: &str,
    text: &[u8],
    ranges: &[Range<usize>],
    result_formats: usize,
) {
    let bound = frontend::bind(
        "",
        name,
        std::iter::empty::<i16>(),
        ranges.iter(),
        |r, buf: &mut BytesMut| {
            buf.put_slice(&text[r.clone()]);
            Ok(IsNull::No)
        },
        std::iter::repeat_n(0i16, result_formats),
        buf,
    );
    if bound.is_err() {
        unreachable!("{WELL_FORMED}");
    }
}

/// Describe of the unnamed portal.
pub fn describe_portal(buf: &mut BytesMut) {
    frontend::describe(b'P', "", buf).expect(WELL_FORMED);
}

/// Execute of the unnamed portal, every row.
pub fn execute(buf: &mut BytesMut) {
    frontend::execute("", 0, buf).expect(WELL_FORMED);
}

pub fn sync(buf: &mut BytesMut) {
    frontend::sync(buf);
}

/// Asks the server to send what it has queued.
pub fn flush(buf: &mut BytesMut) {
    frontend::flush(buf);
}

/// The 16-byte CancelRequest packet sent to a server.
pub fn cancel_request(pid: i32, secret: i32) -> BytesMut {
    let mut b = BytesMut::with_capacity(16);
    frontend::cancel_request(pid, secret, &mut b);
    b
}

/// One message of type `tag` whose body is `parts` in order (a client's message put
/// under another statement name, byte for byte otherwise), in a buffer with room for
/// `more` bytes to follow it.
pub fn splice(tag: u8, parts: &[&[u8]], more: usize) -> BytesMut {
    let len: usize = 4 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut m = BytesMut::with_capacity(len + 1 + more);
    m.put_u8(tag);
    m.put_u32(len as u32);
    for p in parts {
        m.put_slice(p);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_framed_as_postgresql_reads_them() {
        let mut b = BytesMut::new();
        close_statement(&mut b, "s1");
        assert_eq!(&b[..], b"C\0\0\0\x08Ss1\0");
        b.clear();
        flush(&mut b);
        sync(&mut b);
        assert_eq!(&b[..], b"H\0\0\0\x04S\0\0\0\x04");
        b.clear();
        bind(&mut b, "q", b"select 12, 345", &[7..9, 11..14], 0);
        assert_eq!(
            &b[..],
            b"B\0\0\0\x1a\0q\0\0\0\0\x02\0\0\0\x0212\0\0\0\x03345\0\0"
        );
        assert_eq!(
            &cancel_request(1, 2)[..],
            &[0, 0, 0, 16, 4, 210, 22, 46, 0, 0, 0, 1, 0, 0, 0, 2]
        );
        assert_eq!(&splice(b'D', &[b"S", b"x\0"], 0)[..], b"D\0\0\0\x07Sx\0");
    }
}
