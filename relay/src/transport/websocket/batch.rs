//! Writes gathered into one buffer and sent on flush: one syscall per batch of frames, and
//! no buffer at all between batches.
//!
//! tungstenite's own write buffer keeps the capacity of the largest batch for the life of
//! the connection (16 KiB of every VM's memory in a boot storm, docs/benchmarks.md). Under
//! it, with its own buffer set to 0, this layer does the batching and gives its buffer back
//! as soon as the batch is written.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `io` with its writes batched up to `limit` bytes; reads pass straight through.
#[derive(Debug)]
pub(crate) struct BatchedWrites<T> {
    io: T,
    /// Bytes not yet written; `Vec::new()` (no allocation) between batches.
    buf: Vec<u8>,
    /// How much of `buf` the socket has taken.
    written: usize,
    limit: usize,
}

impl<T: AsyncWrite + Unpin> BatchedWrites<T> {
    pub(crate) fn new(io: T, limit: usize) -> Self {
        BatchedWrites {
            io,
            buf: Vec::new(),
            written: 0,
            limit,
        }
    }

    /// Writes out the whole batch, then frees its buffer.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for BatchedWrites<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.buf.is_empty() && this.buf.len() + data.len() > this.limit {
            ready!(this.poll_drain(cx))?;
        }
        if this.buf.is_empty() && data.len() >= this.limit {
            // Nothing to gather it with: straight to the socket, no copy.
            return Pin::new(&mut this.io).poll_write(cx, data);
        }
        if this.buf.capacity() == 0 {
            this.buf.reserve_exact(this.limit);
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for BatchedWrites<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_batch_is_one_write_and_leaves_no_buffer() {
        let (near, mut far) = tokio::io::duplex(1 << 16);
        let mut batched = BatchedWrites::new(near, 1024);
        batched.write_all(b"one ").await.unwrap();
        batched.write_all(b"two").await.unwrap();
        assert_eq!(batched.buf.len(), 7, "gathered, not yet written");
        batched.flush().await.unwrap();
        assert_eq!(batched.buf.capacity(), 0, "the buffer is given back");
        let mut got = [0; 7];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"one two");
    }

    #[tokio::test]
    async fn a_full_batch_is_written_before_more_is_taken() {
        let (near, mut far) = tokio::io::duplex(1 << 16);
        let mut batched = BatchedWrites::new(near, 8);
        batched.write_all(b"12345").await.unwrap();
        batched.write_all(b"6789").await.unwrap();
        assert_eq!(batched.buf, b"6789", "the first batch went out");
        batched.write_all(&[b'x'; 20]).await.unwrap();
        batched.flush().await.unwrap();
        let mut got = vec![0; 29];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..9], b"123456789");
        assert_eq!(&got[9..], &[b'x'; 20]);
    }

    #[tokio::test]
    async fn a_slow_reader_holds_back_the_writer_not_memory() {
        // The peer takes 4 bytes and stops reading: the writer waits, the batch stays bounded.
        let (near, mut far) = tokio::io::duplex(4);
        let mut batched = BatchedWrites::new(near, 8);
        batched.write_all(b"abcdefgh").await.unwrap();
        let blocked = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            batched.write_all(b"ijklmn"),
        )
        .await;
        assert!(blocked.is_err(), "the writer waits for the reader");
        assert!(batched.buf.len() <= 8);
        let mut got = [0; 4];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abcd");
    }
}
