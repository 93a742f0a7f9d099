//! The one walker over a buffer of whole messages (type byte, length, body), borrowed
//! or owned. Buffers come from FramedStream, which checked every length.

use super::Frame;
use bytes::BytesMut;

/// One message in a buffer: its type, and all its bytes (header included).
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub tag: u8,
    pub bytes: &'a [u8],
}

impl<'a> Message<'a> {
    pub fn body(&self) -> &'a [u8] {
        &self.bytes[5..]
    }
}

/// The messages of `buf`, in order; a truncated last one ends the walk.
pub fn messages(buf: &[u8]) -> impl Iterator<Item = Message<'_>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let total = total_len(rest)?;
        let (bytes, after) = (rest.get(..total)?, &rest[total..]);
        rest = after;
        Some(Message {
            tag: bytes[0],
            bytes,
        })
    })
}

/// The message `buf` holds when it holds exactly one.
pub fn single(buf: &[u8]) -> Option<Message<'_>> {
    (total_len(buf)? == buf.len()).then(|| Message {
        tag: buf[0],
        bytes: buf,
    })
}

/// Splits a buffer of whole messages back into frames, without copying.
pub fn split_frames(mut buf: BytesMut) -> impl Iterator<Item = Frame> {
    std::iter::from_fn(move || {
        let total = total_len(&buf)?.min(buf.len());
        let data = buf.split_to(total);
        Some(Frame { tag: data[0], data })
    })
}

/// The size of the first message, header included (at least the header's 5 bytes).
fn total_len(buf: &[u8]) -> Option<usize> {
    let len = u32::from_be_bytes(buf.get(1..5)?.try_into().ok()?) as usize;
    Some(len.max(4) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_whole_messages_and_stops_at_a_truncated_one() {
        let buf = b"Q\0\0\0\x0bselect\0S\0\0\0\x04E\0\0\0\x09\0";
        let got: Vec<_> = messages(buf).map(|m| (m.tag, m.body().len())).collect();
        assert_eq!(got, [(b'Q', 7), (b'S', 0)]);
        assert!(single(b"S\0\0\0\x04").is_some());
        assert!(single(b"S\0\0\0\x04H\0\0\0\x04").is_none());
        let frames: Vec<_> = split_frames(BytesMut::from(&buf[..17]))
            .map(|f| f.tag)
            .collect();
        assert_eq!(frames, [b'Q', b'S']);
    }
}
