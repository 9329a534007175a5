//! The accepted TCP stream, wrapped so that a WebSocket upgrade can cap its kernel send buffer.
//!
//! Left to itself, Linux grows a socket's send buffer up to `net.ipv4.tcp_wmem`'s maximum (4 MB
//! here): a client that stops reading then hides thousands of frames in the kernel before its
//! bounded hub queue notices anything. A WebSocket's buffer is therefore capped
//! (`MINICHAT_WS_SEND_BUFFER_BYTES`), so that a stalled client shows up as a stalled write within
//! a few frames. REST connections keep the kernel's autotuning: a large history page is not held
//! to a small window.
//!
//! hyper owns the stream from the first request on, and an upgrade's handler never sees it, so
//! the handler asks through a [`SendBufferCap`] (found in the upgrade request's extensions) and
//! the stream applies the cap itself on its next write, which is the `101` itself: before any
//! frame goes out.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Asks the connection's stream to cap its send buffer; cheap to clone (one `Arc`).
#[derive(Clone, Debug, Default)]
pub struct SendBufferCap(Arc<AtomicUsize>);

impl SendBufferCap {
    /// Caps the send buffer at `bytes` (the kernel doubles it for its bookkeeping), from the
    /// stream's next write on.
    pub fn request(&self, bytes: usize) {
        self.0.store(bytes, Ordering::Release);
    }
}

/// An accepted stream that applies a requested send-buffer cap before its next write.
pub struct Tcp {
    stream: TcpStream,
    cap: SendBufferCap,
}

impl Tcp {
    /// The stream, and the handle its upgrade handler asks through.
    pub fn new(stream: TcpStream) -> (Tcp, SendBufferCap) {
        let cap = SendBufferCap::default();
        (
            Tcp {
                stream,
                cap: cap.clone(),
            },
            cap,
        )
    }

    fn apply_cap(&self) {
        // A relaxed load on every write; the swap only once, when a cap was asked for.
        if self.cap.0.load(Ordering::Relaxed) == 0 {
            return;
        }
        let bytes = self.cap.0.swap(0, Ordering::Acquire);
        if let Err(e) = socket2::SockRef::from(&self.stream).set_send_buffer_size(bytes) {
            tracing::debug!(error = %e, "could not cap the socket's send buffer");
        }
    }
}

impl AsyncRead for Tcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.apply_cap();
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.apply_cap();
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
