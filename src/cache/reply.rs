//! Whether a reply the client got can be replayed to another: only rows and tags,
//! ending with ReadyForQuery idle. Errors, notices, parameter changes, COPY and anything
//! else stay out of the cache.

use super::Refused;
use crate::protocol::tags::backend::{
    COMMAND_COMPLETE_TAG, DATA_ROW_TAG, EMPTY_QUERY_RESPONSE_TAG, READY_FOR_QUERY_TAG,
    ROW_DESCRIPTION_TAG,
};
use crate::protocol::walk;

/// Checks a simple Query's whole reply.
pub fn check(reply: &[u8]) -> Result<(), Refused> {
    let mut seen = 0;
    let mut last_ready = None;
    for m in walk::messages(reply) {
        seen += m.bytes.len();
        if last_ready.is_some() {
            return Err(Refused::Reply); // something after the ReadyForQuery
        }
        match m.tag {
            ROW_DESCRIPTION_TAG
            | DATA_ROW_TAG
            | COMMAND_COMPLETE_TAG
            | EMPTY_QUERY_RESPONSE_TAG => {}
            READY_FOR_QUERY_TAG => last_ready = m.body().first().copied(),
            _ => return Err(Refused::Reply),
        }
    }
    if seen != reply.len() || last_ready != Some(b'I') {
        return Err(Refused::Reply);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn rows() -> Vec<u8> {
        let mut v = msg(
            b'T',
            b"\0\x01v\0\0\0\0\0\0\x01\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
        );
        v.extend(msg(b'D', b"\0\x01\0\0\0\x011"));
        v.extend(msg(b'C', b"SELECT 1\0"));
        v
    }

    #[test]
    fn rows_and_tags_ending_idle_are_kept() {
        let mut ok = rows();
        ok.extend(msg(b'Z', b"I"));
        assert_eq!(check(&ok), Ok(()));
        let empty = [msg(b'I', b""), msg(b'Z', b"I")].concat();
        assert_eq!(check(&empty), Ok(()));
    }

    #[test]
    fn anything_else_is_not() {
        let z = msg(b'Z', b"I");
        let error = msg(b'E', b"SERROR\0C42P01\0Mno\0\0");
        let notice = msg(b'N', b"SWARNING\0C01000\0Mhm\0\0");
        let status = msg(b'S', b"TimeZone\0UTC\0");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("error", [error, z.clone()].concat()),
            ("notice", [notice, rows(), z.clone()].concat()),
            ("parameter status", [rows(), status, z.clone()].concat()),
            ("in a transaction", [rows(), msg(b'Z', b"T")].concat()),
            ("no ReadyForQuery", rows()),
            (
                "two replies",
                [rows(), z.clone(), rows(), z.clone()].concat(),
            ),
            ("truncated", [rows(), z.clone()].concat()[..20].to_vec()),
        ];
        for (what, bytes) in cases {
            assert_eq!(check(&bytes), Err(Refused::Reply), "{what}");
        }
    }
}
