//! The upgraded socket's read side, so that an idle WebSocket holds no read buffer.
//!
//! tungstenite allocates its read buffer when the socket opens and never shrinks it, and the
//! buffer's size is also the most it reads in one call: a 4 KiB buffer cost every idle socket
//! 4 KiB. Instead tungstenite gets a small buffer (`READ_CHUNK`, enough for a typical chat
//! frame in one call), and [`LazyRead`] below it reads the socket in [`SOCKET_READ`] chunks into
//! a buffer on the stack: what tungstenite's call cannot take is kept on the heap, exactly that
//! long, and freed once tungstenite has taken it. So a burst of frames still costs one read
//! from the kernel, and a socket with nothing to read holds nothing here.

use bytes::{Buf, Bytes};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The read buffer tungstenite is given, and so the most it asks for in one call.
pub(super) const READ_CHUNK: usize = 256;

/// The most read from the socket in one call (what tungstenite's own buffer was before).
pub(super) const SOCKET_READ: usize = 4096;

/// A stream whose reads go through a stack buffer; only unread leftovers are kept.
pub(super) struct LazyRead<S> {
    io: S,
    /// Read from the socket, not yet taken by the reader: empty (and unallocated) when idle.
    leftover: Bytes,
}

impl<S> LazyRead<S> {
    pub(super) fn new(io: S) -> LazyRead<S> {
        LazyRead {
            io,
            leftover: Bytes::new(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LazyRead<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.leftover.is_empty() {
            let n = this.leftover.len().min(buf.remaining());
            buf.put_slice(&this.leftover[..n]);
            this.leftover.advance(n);
            if this.leftover.is_empty() {
                // Freed now, not when the next burst replaces it.
                this.leftover = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= SOCKET_READ {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let mut chunk = [MaybeUninit::<u8>::uninit(); SOCKET_READ];
        let mut chunk = ReadBuf::uninit(&mut chunk);
        ready!(Pin::new(&mut this.io).poll_read(cx, &mut chunk))?;
        let read = chunk.filled();
        let n = read.len().min(buf.remaining());
        buf.put_slice(&read[..n]);
        if n < read.len() {
            this.leftover = Bytes::copy_from_slice(&read[n..]);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LazyRead<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_see_every_byte_in_order_and_keep_nothing_after() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let sent: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        client.write_all(&sent).await.unwrap();
        drop(client);
        let mut reader = LazyRead::new(server);
        let mut got = Vec::new();
        let mut small = [0u8; 100];
        loop {
            let n = reader.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, sent);
        assert!(reader.leftover.is_empty());
    }
}
