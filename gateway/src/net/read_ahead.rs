//! A socket wrapper for the TLS legs of an interception: it replays the bytes already read
//! (the peeked ClientHello), reads ahead in large chunks while data keeps coming, and passes
//! vectored writes through.
//!
//! rustls reads at most 4 KiB per `read_tls`, so a 16 KiB record costs four `recvfrom`s, and
//! tokio's default `poll_write_vectored` sends only the first buffer, so a `writev` of four
//! records becomes four `sendto`s. Bulk transfers pay for both per record. While reads fill
//! what was asked, [`ReadAhead`] asks the socket for more (doubling up to [`AHEAD_MAX`]) and
//! serves the TLS reader from memory; once reads come back short (an interactive or idle
//! connection) it reads straight into the caller's buffer again and frees its own, so an idle
//! connection holds no read-ahead buffer.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The first read-ahead size, once a read filled the caller's buffer.
pub const AHEAD_MIN: usize = 16 * 1024;
/// The largest read-ahead: four full TLS records, what the relay moves per write.
pub const AHEAD_MAX: usize = 64 * 1024;

/// `inner`, with `prefix` replayed first and reads taken ahead while the data keeps coming.
#[derive(Debug)]
pub struct ReadAhead<T> {
    inner: T,
    /// Bytes read but not yet handed out: `buf[start..end]`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// How much the next read asks the socket for; 0: straight into the caller's buffer.
    ahead: usize,
}

impl<T> ReadAhead<T> {
    /// Reads `inner`.
    pub fn new(inner: T) -> Self {
        Self::with_prefix(Vec::new(), inner)
    }

    /// Hands out `prefix` (bytes already read from `inner`), then reads `inner`.
    pub fn with_prefix(prefix: Vec<u8>, inner: T) -> Self {
        let end = prefix.len();
        ReadAhead {
            inner,
            buf: prefix,
            start: 0,
            end,
            ahead: 0,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Bytes held for the reader, not yet handed out.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Copies what is held into `out`; frees the buffer once it is empty and reads are short.
    fn hand_out(&mut self, out: &mut ReadBuf<'_>) {
        let n = self.buffered().min(out.remaining());
        out.put_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.ahead == 0 {
                self.buf = Vec::new();
            }
        }
    }

    /// The next read-ahead size after a read of `n` bytes out of `asked`.
    fn adapt(&mut self, n: usize, asked: usize) {
        self.ahead = if n == asked {
            (asked * 2).clamp(AHEAD_MIN, AHEAD_MAX)
        } else if n < asked / 2 {
            // Halved, and below the minimum back to reading straight through.
            Some(self.ahead / 2)
                .filter(|&half| half >= AHEAD_MIN)
                .unwrap_or(0)
        } else {
            self.ahead
        };
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadAhead<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.buffered() > 0 {
            this.hand_out(out);
            return Poll::Ready(Ok(()));
        }
        let asked = out.remaining();
        if this.ahead <= asked {
            // Nothing to gain from a buffer of our own: read straight through.
            let before = out.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, out))?;
            let n = out.filled().len() - before;
            if this.ahead == 0 && n == asked && asked > 0 {
                this.ahead = AHEAD_MIN.max(asked * 2).min(AHEAD_MAX);
            }
            return Poll::Ready(Ok(()));
        }
        let size = this.ahead;
        if this.buf.len() != size {
            this.buf.resize(size, 0);
        }
        let mut ahead = ReadBuf::new(&mut this.buf[..size]);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut ahead))?;
        let n = ahead.filled().len();
        this.start = 0;
        this.end = n;
        this.adapt(n, size);
        this.hand_out(out);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadAhead<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test]
    async fn replays_the_prefix_then_reads() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b" world").await.unwrap();
        drop(a);
        let mut stream = ReadAhead::with_prefix(b"hello".to_vec(), b);
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    /// Small reads of a large stream: every byte arrives in order, the read-ahead grows to
    /// its maximum, and once the stream goes quiet the buffer is freed.
    #[tokio::test]
    async fn reads_ahead_while_data_keeps_coming_and_frees_when_short() {
        let (mut a, b) = tokio::io::duplex(1 << 20);
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        a.write_all(&data).await.unwrap();
        let mut stream = ReadAhead::new(b);
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut max_ahead = 0;
        while got.len() < data.len() {
            let n = stream.read(&mut chunk).await.unwrap();
            got.extend_from_slice(&chunk[..n]);
            max_ahead = max_ahead.max(stream.ahead);
        }
        assert_eq!(got, data);
        assert_eq!(max_ahead, AHEAD_MAX);
        // Short reads from now on: back to reading straight through, nothing held.
        for _ in 0..4 {
            a.write_all(b"ping").await.unwrap();
            let n = stream.read(&mut chunk).await.unwrap();
            assert_eq!(&chunk[..n], b"ping");
        }
        assert_eq!(stream.ahead, 0);
        assert_eq!(stream.buf.capacity(), 0);
    }

    #[tokio::test]
    async fn passes_vectored_writes_through() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut stream = ReadAhead::new(a);
        assert_eq!(stream.is_write_vectored(), stream.inner.is_write_vectored());
        let n = stream
            .write_vectored(&[IoSlice::new(b"ab"), IoSlice::new(b"cd")])
            .await
            .unwrap();
        drop(stream);
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(&got, &b"abcd"[..n]);
    }
}
