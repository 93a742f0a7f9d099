//! Bounded framing of protocol messages (type byte + length) over a stream.
//! Frames keep their raw bytes so the proxy forwards them untouched; only the
//! messages it must act on are decoded, elsewhere, with pgwire.

use super::Stream;
use bytes::{Buf, BytesMut};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

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

/// Reads what a ready socket holds into a buffer of just that size, through a chunk on
/// the stack. Pending when there was nothing after all (the readiness was stale); the
/// socket's waker is then re-armed by the caller.
fn read_into_exact(tcp: &mut tokio::net::TcpStream) -> Poll<io::Result<BytesMut>> {
    let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
    let mut rb = ReadBuf::uninit(&mut chunk);
    let mut cx = Context::from_waker(Waker::noop());
    // poll_read, not try_read: a short read also clears the socket's readiness, so the
    // next wait sleeps instead of returning at once into a read that finds nothing.
    match Pin::new(tcp).poll_read(&mut cx, &mut rb) {
        Poll::Ready(Ok(())) => Poll::Ready(Ok(BytesMut::from(rb.filled()))),
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

pub struct FramedStream {
    pub stream: Stream,
    rbuf: BytesMut,
    max_len: usize,
    /// Set once the owner gives the buffer back between requests (`release_buffer`): a
    /// request then arrives in a buffer of just its size, read through the stack, and a
    /// message filling it takes it whole. That is one small allocation per request, not
    /// a read-sized buffer plus the header that splitting one into two handles needs.
    exact: bool,
}

impl FramedStream {
    pub fn new(stream: Stream, max_len: usize) -> Self {
        FramedStream {
            stream,
            rbuf: BytesMut::new(),
            max_len,
            exact: false,
        }
    }

    /// Bytes read but not yet returned as frames (e.g. after a startup packet).
    pub fn with_buffered(stream: Stream, max_len: usize, rbuf: BytesMut) -> Self {
        FramedStream {
            stream,
            rbuf,
            max_len,
            exact: false,
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
            if let Some(total) = frame_len(&self.rbuf, self.max_len)? {
                let data = if self.exact && total == self.rbuf.len() {
                    std::mem::take(&mut self.rbuf)
                } else {
                    self.rbuf.split_to(total)
                };
                return Ok(Some(Frame { tag: data[0], data }));
            }
            if self.rbuf.capacity() == 0 {
                // An idle connection holds no buffer: wait until there is something
                // to read before allocating one (TLS streams cannot tell; they read).
                if let Stream::Plain(tcp) = &mut self.stream {
                    // poll_read_ready, not readable(): it waits through the socket's own
                    // waker slot, so an idle client's future carries no waiter node.
                    std::future::poll_fn(|cx| tcp.poll_read_ready(cx)).await?;
                    if self.exact {
                        match read_into_exact(tcp) {
                            Poll::Ready(Ok(got)) if got.is_empty() => return Ok(None),
                            Poll::Ready(Ok(got)) => self.rbuf = got,
                            Poll::Ready(Err(e)) => return Err(e.into()),
                            Poll::Pending => {}
                        }
                        continue;
                    }
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
        self.exact = true;
        if self.rbuf.is_empty() {
            self.rbuf = BytesMut::new();
        }
    }
}
