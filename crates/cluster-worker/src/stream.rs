//! [`ClientStream`]: a client connection, possibly handed over from another worker with
//! bytes that worker had already read.

use std::io;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::link::Counters;

/// A TCP client connection from [`Listener::accept`](crate::Listener::accept).
///
/// Usually a plain accepted connection. A keep-alive connection handed over by a worker
/// that stopped (a rolling restart) may come with bytes that worker had already read from
/// it (the start of the next request): reading a `ClientStream` yields those first, then
/// the socket's. It derefs to the [`TcpStream`] for everything else (addresses, options);
/// read through the `ClientStream`, not the `TcpStream`, or the replayed bytes are skipped.
#[derive(Debug)]
pub struct ClientStream {
    stream: TcpStream,
    prefix: Vec<u8>,
    offset: usize,
    /// Least-conn: tells the watcher when the connection is gone from this worker.
    _closed: Option<CloseReport>,
}

/// Counts a connection from the watcher closed when dropped (least-conn).
#[derive(Debug)]
struct CloseReport {
    closed: Arc<AtomicU64>,
    changed: Arc<tokio::sync::Notify>,
}

impl Drop for CloseReport {
    fn drop(&mut self) {
        self.closed.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_one();
    }
}

impl ClientStream {
    pub(crate) fn new(stream: TcpStream, prefix: Vec<u8>) -> Self {
        Self {
            stream,
            prefix,
            offset: 0,
            _closed: None,
        }
    }

    /// Reports its close to the watcher (least-conn); the socket itself, or the bytes it
    /// came with, leaving through [`into_parts`](Self::into_parts) count as a close too.
    pub(crate) fn counted(mut self, counters: &Counters) -> Self {
        self._closed = Some(CloseReport {
            closed: counters.closed.clone(),
            changed: counters.closed_changed.clone(),
        });
        self
    }

    /// The socket and the bytes read from it that nobody consumed yet (empty for a plain
    /// connection).
    pub fn into_parts(mut self) -> (TcpStream, Vec<u8>) {
        let unread = self.prefix.split_off(self.offset.min(self.prefix.len()));
        (self.stream, unread)
    }
}

impl From<TcpStream> for ClientStream {
    fn from(stream: TcpStream) -> Self {
        Self::new(stream, Vec::new())
    }
}

impl Deref for ClientStream {
    type Target = TcpStream;

    fn deref(&self) -> &TcpStream {
        &self.stream
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.offset < this.prefix.len() {
            let rest = &this.prefix[this.offset..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.offset += n;
            if this.offset == this.prefix.len() {
                this.prefix = Vec::new();
                this.offset = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
