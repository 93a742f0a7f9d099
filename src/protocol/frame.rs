//! Bounded framing of protocol messages (type byte + length) over a stream.
//! Frames keep their raw bytes so the proxy forwards them untouched; only the
//! messages it must act on are decoded, elsewhere, with pgwire.

use super::Stream;
use bytes::{Buf, BytesMut};
use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How much to grow the read buffer by when it runs out of room.
const READ_CHUNK: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed in the middle of a message")]
    Truncated,
    #[error("message length {len} is invalid (limit {limit})")]
    BadLength { len: usize, limit: usize },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// One complete message: `data` holds the type byte, the length and the body.
#[derive(Debug)]
pub struct Frame {
    pub tag: u8,
    pub data: BytesMut,
}

impl Frame {
    pub fn body(&self) -> &[u8] {
        &self.data[5..]
    }
}

/// Total size of the first message in `buf` if it is complete; its length is checked
/// against `max_len` before anything is allocated for it.
pub fn frame_len(buf: &[u8], max_len: usize) -> Result<Option<usize>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len < 4 || len > max_len {
        return Err(FrameError::BadLength {
            len,
            limit: max_len,
        });
    }
    Ok((buf.len() > len).then_some(len + 1))
}

/// Takes the first complete message off `buf`, without copying it.
pub fn split_frame(buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, FrameError> {
    Ok(frame_len(buf, max_len)?.map(|total| {
        let data = buf.split_to(total);
        Frame { tag: data[0], data }
    }))
}

pub struct FramedStream {
    pub stream: Stream,
    rbuf: BytesMut,
    max_len: usize,
}

impl FramedStream {
    pub fn new(stream: Stream, max_len: usize) -> Self {
        FramedStream {
            stream,
            rbuf: BytesMut::new(),
            max_len,
        }
    }

    /// Bytes read but not yet returned as frames (e.g. after a startup packet).
    pub fn with_buffered(stream: Stream, max_len: usize, rbuf: BytesMut) -> Self {
        FramedStream {
            stream,
            rbuf,
            max_len,
        }
    }

    pub fn into_parts(self) -> (Stream, BytesMut) {
        (self.stream, self.rbuf)
    }

    /// True when a whole frame is already buffered, so a caller can batch its writes.
    pub fn has_buffered_frame(&self) -> bool {
        matches!(frame_len(&self.rbuf, self.max_len), Ok(Some(_)))
    }

    /// Next complete frame; `Ok(None)` on a clean end of stream between frames.
    /// Cancel-safe: partial data stays in the buffer.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            if let Some(frame) = split_frame(&mut self.rbuf, self.max_len)? {
                return Ok(Some(frame));
            }
            if self.rbuf.capacity() == 0 {
                // An idle connection holds no buffer: wait until there is something
                // to read before allocating one (TLS streams cannot tell; they read).
                if let Stream::Plain(tcp) = &self.stream {
                    // poll_read_ready, not readable(): it waits through the socket's own
                    // waker slot, so an idle client's future carries no waiter node.
                    std::future::poll_fn(|cx| tcp.poll_read_ready(cx)).await?;
                }
            }
            if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                // Reserve at least what the pending frame still needs, so a large
                // message is read in few calls.
                let want = if self.rbuf.len() >= 5 {
                    let len = (&self.rbuf[1..5]).get_u32() as usize + 1;
                    (len - self.rbuf.len()).clamp(READ_CHUNK, 4 * 1024 * 1024)
                } else {
                    READ_CHUNK
                };
                self.rbuf.reserve(want);
            }
            let n = self.stream.read_buf(&mut self.rbuf).await?;
            if n == 0 {
                return if self.rbuf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
        }
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        self.stream.flush().await
    }

    /// Drops read-buffer capacity once nothing is pending, so idle connections stay small.
    pub fn shrink_if_idle(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > READ_CHUNK {
            self.rbuf = BytesMut::new();
        }
    }

    /// Gives the read buffer back entirely when nothing is pending (between requests).
    pub fn release_buffer(&mut self) {
        if self.rbuf.is_empty() {
            self.rbuf = BytesMut::new();
        }
    }
}
