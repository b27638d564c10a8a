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
    /// In a cluster: counted among the worker's open connections while it lives.
    _open: Option<OpenCount>,
    /// Counted among a serve loop's open connections while it lives.
    _lease: Option<Lease>,
}

/// One open connection in the worker's count, from accept to drop.
#[derive(Debug)]
struct OpenCount(Arc<AtomicU64>);

impl Drop for OpenCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
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
            _open: None,
            _lease: None,
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

    /// Counts it among the worker's open connections until it is dropped.
    pub(crate) fn track_open(mut self, counters: &Counters) -> Self {
        counters.open.fetch_add(1, Ordering::Relaxed);
        self._open = Some(OpenCount(counters.open.clone()));
        self
    }

    /// Counts it among a serve loop's open connections until it is dropped.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn with_lease(mut self, lease: Lease) -> Self {
        self._lease = Some(lease);
        self
    }

    /// Puts `bytes` back in front of what is left to read (a peek at a connection's first
    /// bytes, to tell HTTP/2 from HTTP/1.1).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn unread(&mut self, mut bytes: Vec<u8>) {
        bytes.extend_from_slice(&self.prefix[self.offset.min(self.prefix.len())..]);
        self.prefix = bytes;
        self.offset = 0;
    }

    /// The socket and the bytes read from it that nobody consumed yet (empty for a plain
    /// connection).
    pub fn into_parts(mut self) -> (TcpStream, Vec<u8>) {
        let unread = self.prefix.split_off(self.offset.min(self.prefix.len()));
        (self.stream, unread)
    }

    /// [`into_parts`](Self::into_parts), the connection still counted (open, and in its
    /// serve loop's drain) until the returned guard is dropped: for a hand-over on its way.
    #[cfg_attr(not(feature = "ws"), allow(dead_code))]
    pub(crate) fn into_parts_held(mut self) -> (TcpStream, Vec<u8>, Held) {
        let held = Held {
            _closed: self._closed.take(),
            _open: self._open.take(),
            _lease: self._lease.take(),
        };
        let (stream, unread) = self.into_parts();
        (stream, unread, held)
    }

    /// The live session a worker of the previous generation handed over with this
    /// connection, if it came with one: the record, taken off the front of the replayed
    /// bytes (which are then the client's own).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn take_session(
        &mut self,
    ) -> Option<Result<cluster_ipc::session::SessionHandover, cluster_ipc::session::SessionError>>
    {
        let pending = &self.prefix[self.offset.min(self.prefix.len())..];
        let session = match cluster_ipc::session::SessionHandover::from_prefix(pending)? {
            Ok((handover, unread)) => Ok((handover, unread.to_vec())),
            Err(e) => Err(e),
        };
        Some(session.map(|(handover, unread)| {
            self.prefix = unread;
            self.offset = 0;
            handover
        }))
    }
}

/// What keeps a connection counted while it is handed over (see
/// [`ClientStream::into_parts_held`]).
#[derive(Debug)]
pub(crate) struct Held {
    _closed: Option<CloseReport>,
    _open: Option<OpenCount>,
    _lease: Option<Lease>,
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

/// The connections a serve loop accepted that are still open, wherever they are now (an
/// upgraded one lives in the application's task).
#[derive(Debug, Default)]
pub(crate) struct Live {
    count: std::sync::atomic::AtomicUsize,
    changed: tokio::sync::Notify,
}

#[cfg_attr(not(feature = "http"), allow(dead_code))]
impl Live {
    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Resolves once none is open.
    pub(crate) async fn idle(&self) {
        loop {
            let changed = self.changed.notified();
            if self.count() == 0 {
                return;
            }
            changed.await;
        }
    }
}

/// One open connection of a serve loop, from accept to drop.
#[derive(Debug)]
pub(crate) struct Lease(Arc<Live>);

#[cfg_attr(not(feature = "http"), allow(dead_code))]
impl Lease {
    pub(crate) fn new(live: &Arc<Live>) -> Self {
        live.count.fetch_add(1, Ordering::SeqCst);
        Self(live.clone())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}
