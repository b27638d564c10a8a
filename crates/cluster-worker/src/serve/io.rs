//! [`HoldIo`]: a connection's socket as hyper sees it, whose shutdown can be held back, so
//! a connection ended on purpose keeps its socket open for the next generation.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::TokioIo;

/// A client connection for hyper; with [`hold`](Self::hold) set, hyper's `shutdown` at the
/// end of the connection sends nothing to the client (no `FIN`): the socket is about to be
/// handed back to the watcher, whole.
pub(crate) struct HoldIo<I> {
    inner: TokioIo<I>,
    hold: Arc<AtomicBool>,
}

impl<I> HoldIo<I> {
    pub(crate) fn new(stream: I) -> Self {
        Self {
            inner: TokioIo::new(stream),
            hold: Arc::default(),
        }
    }

    /// The switch that holds the shutdown back.
    pub(crate) fn hold(&self) -> Arc<AtomicBool> {
        self.hold.clone()
    }

    pub(crate) fn into_inner(self) -> I {
        self.inner.into_inner()
    }
}

impl<I: tokio::io::AsyncRead + Unpin> Read for HoldIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<I: tokio::io::AsyncWrite + Unpin> Write for HoldIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.hold.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
}
