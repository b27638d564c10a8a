//! [`AsyncFdSocket`]: the tokio face of [`FdSocket`](crate::FdSocket).

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::Mutex;

use crate::frame::{self, MAX_CHUNK};
use crate::raw;
use crate::socket::{Progress, RecvState, adopt_seqpacket, continuations, seqpacket_pair};
use crate::{Error, Limits, Message, SocketKindError};

/// Continuation bytes of a message whose first packet has left but whose tail has not.
#[derive(Debug, Default)]
struct SendState {
    pending: Vec<u8>,
    sent: usize,
}

/// The async message socket: the same wire format and guarantees as
/// [`FdSocket`](crate::FdSocket), driven by tokio's reactor.
///
/// Both directions are usable through `&self`, so one task can receive while others send.
///
/// # Cancel safety
/// [`recv`](Self::recv) is cancel-safe: a packet is taken off the socket only inside the
/// poll that returns it, and a half-reassembled message stays buffered for the next call.
/// [`send`](Self::send) either sends nothing (cancelled before its first packet left) or
/// sends the whole message: if cancelled after the first packet, the rest is kept and goes out
/// ahead of the next `send` or on [`flush`](Self::flush).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (a, b) = fdpass::AsyncFdSocket::pair()?;
/// a.send(b"ping", &[]).await?;
/// let message = b.recv().await?.expect("open");
/// assert_eq!(message.data, b"ping");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct AsyncFdSocket {
    fd: AsyncFd<OwnedFd>,
    limits: Limits,
    send: Mutex<SendState>,
    recv: Mutex<RecvState>,
}

impl AsyncFdSocket {
    /// Creates a connected, non-blocking pair registered with the current runtime.
    ///
    /// # Errors
    /// Outside a tokio runtime, or when out of descriptors.
    pub fn pair() -> io::Result<(Self, Self)> {
        let (a, b) = seqpacket_pair(true)?;
        Ok((
            Self::from_parts(a, Limits::default())?,
            Self::from_parts(b, Limits::default())?,
        ))
    }

    /// Adopts an existing `AF_UNIX` `SOCK_SEQPACKET` socket, switching it to non-blocking.
    ///
    /// # Errors
    /// [`SocketKindError::Mismatch`] for another kind of descriptor (it is closed), or
    /// [`SocketKindError::Io`] outside a runtime.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, SocketKindError> {
        adopt_seqpacket(&fd, true)?;
        Ok(Self::from_parts(fd, Limits::default())?)
    }

    pub(crate) fn from_parts(fd: OwnedFd, limits: Limits) -> io::Result<Self> {
        Ok(Self {
            fd: register(fd, Interest::READABLE)?,
            limits,
            send: Mutex::new(SendState::default()),
            recv: Mutex::new(RecvState::new(&limits)),
        })
    }

    /// Connects to a [`SeqpacketListener`](crate::SeqpacketListener) (or any `AF_UNIX`
    /// `SOCK_SEQPACKET` listener) at `path`.
    ///
    /// # Errors
    /// When the path cannot be reached (`ENOENT`, `ECONNREFUSED`, `EACCES`, ...).
    pub async fn connect(path: &std::path::Path) -> io::Result<Self> {
        let fd = crate::socket::new_seqpacket()?;
        let address = rustix::net::SocketAddrUnix::new(path)?;
        loop {
            match rustix::net::connect(&fd, &address) {
                Ok(()) => break,
                // The listener's backlog is full: it is busy accepting; try again shortly.
                Err(rustix::io::Errno::AGAIN) => {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Self::from_parts(fd, Limits::default())
    }

    /// Replaces the limits enforced on both directions.
    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self.recv = Mutex::new(RecvState::new(&limits));
        self
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Sends one packet, waiting for room when the peer's queue is full.
    ///
    /// The socket is registered for readability only: registered for writability too, every
    /// packet the peer takes off its queue would wake this process's reactor (the kernel
    /// signals "room to write" on each one), which on a busy hand-off pipe costs a wake-up per
    /// message. So a send first just tries, and only when the queue is full is a duplicate of
    /// the descriptor registered for writability, kept in `waiter` until the caller's send is
    /// done. Registration reports current readiness, so room made in between is not missed.
    async fn send_packet(
        &self,
        waiter: &mut Option<AsyncFd<OwnedFd>>,
        iov: &[IoSlice<'_>],
        fds: &[BorrowedFd<'_>],
    ) -> io::Result<usize> {
        if waiter.is_none() {
            loop {
                match raw::send_packet(self.as_fd(), iov, fds) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    done => return done,
                }
                let registered = rustix::io::fcntl_dupfd_cloexec(self.as_fd(), 0)
                    .map_err(io::Error::from)
                    .and_then(|duplicate| register(duplicate, Interest::WRITABLE));
                match registered {
                    Ok(registered) => {
                        *waiter = Some(registered);
                        break;
                    }
                    // Out of descriptors or reactor space: the peer is fine, so poll for
                    // room instead of failing the send.
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(1)).await,
                }
            }
        }
        let waiter = waiter.as_ref().expect("registered above");
        waiter
            .async_io(Interest::WRITABLE, |fd| {
                raw::send_packet(fd.as_fd(), iov, fds)
            })
            .await
    }

    async fn flush_pending(
        &self,
        state: &mut SendState,
        waiter: &mut Option<AsyncFd<OwnedFd>>,
    ) -> Result<(), Error> {
        while state.sent < state.pending.len() {
            let end = state.pending.len().min(state.sent + MAX_CHUNK);
            let packet = continuations(&state.pending[state.sent..end]).next();
            if let Some(packet) = packet {
                self.send_packet(waiter, &packet, &[]).await?;
            }
            state.sent = end;
        }
        state.pending.clear();
        state.sent = 0;
        Ok(())
    }

    /// Sends one message: `data` with `fds` attached (the peer receives duplicates).
    ///
    /// # Errors
    /// [`Error::TooManyFds`] / [`Error::MessageTooLarge`] before anything is sent;
    /// [`Error::Io`] when the socket fails.
    pub async fn send(&self, data: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), Error> {
        let header = frame::first_header(data.len(), fds.len(), &self.limits)?;
        let (first, rest) = frame::split_first(data);
        // Uncontended (the usual case) the lock is taken without building an acquire future.
        let mut state = match self.send.try_lock() {
            Ok(state) => state,
            Err(_) => self.send.lock().await,
        };
        let mut waiter = None;
        if !state.pending.is_empty() {
            self.flush_pending(&mut state, &mut waiter).await?;
        }
        self.send_packet(
            &mut waiter,
            &[IoSlice::new(&header), IoSlice::new(first)],
            fds,
        )
        .await?;
        if !rest.is_empty() {
            state.pending.extend_from_slice(rest);
            self.flush_pending(&mut state, &mut waiter).await?;
        }
        Ok(())
    }

    /// Sends one message if that can be done without waiting, as a balancer needs to pass a
    /// connection to the next peer instead of queueing behind a busy one. Only messages of
    /// one packet (up to [`MAX_CHUNK`](crate::MAX_CHUNK) bytes), which go whole or not at
    /// all; a longer one would have to wait for its tail.
    ///
    /// # Errors
    /// [`Error::Io`] of kind [`WouldBlock`](io::ErrorKind::WouldBlock) when nothing was sent
    /// because the peer's queue is full, another send is in progress, or an earlier message's
    /// tail is still pending; of kind [`InvalidInput`](io::ErrorKind::InvalidInput) for a
    /// message longer than one packet; otherwise as [`send`](Self::send).
    pub fn try_send(&self, data: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), Error> {
        let header = frame::first_header(data.len(), fds.len(), &self.limits)?;
        let (first, rest) = frame::split_first(data);
        if !rest.is_empty() {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "try_send sends messages of one packet; use send",
            )));
        }
        let would_block = || Error::Io(io::ErrorKind::WouldBlock.into());
        let Ok(state) = self.send.try_lock() else {
            return Err(would_block());
        };
        if !state.pending.is_empty() {
            return Err(would_block());
        }
        raw::send_packet(
            self.as_fd(),
            &[IoSlice::new(&header), IoSlice::new(first)],
            fds,
        )?;
        Ok(())
    }

    /// Finishes sending a message whose `send` was cancelled midway.
    ///
    /// # Errors
    /// [`Error::Io`] when the socket fails.
    pub async fn flush(&self) -> Result<(), Error> {
        let mut state = self.send.lock().await;
        self.flush_pending(&mut state, &mut None).await
    }

    /// Receives the next whole message, or `None` when the peer closed between messages.
    ///
    /// # Errors
    /// Any protocol violation of [`Error`]; the offending descriptors are closed.
    pub async fn recv(&self) -> Result<Option<Message>, Error> {
        let mut guard = self.recv.lock().await;
        let state = &mut *guard;
        loop {
            let packet = self
                .fd
                .async_io(Interest::READABLE, |fd| {
                    raw::recv_packet(fd.as_fd(), &mut state.buf, &mut state.cmsg)
                })
                .await?;
            match state.absorb(packet, &self.limits)? {
                Progress::Message(message) => return Ok(Some(message)),
                Progress::Eof => return Ok(None),
                Progress::More => {}
            }
        }
    }
}

/// Registers a descriptor this process owns with the current tokio reactor for `interest`
/// (tokio's own safe constructors are deprecated as unsound: the registration must not
/// outlive the descriptor, which owning it here guarantees). For any socket, not only this
/// crate's: a datagram socket, say.
///
/// # Errors
/// When there is no runtime, or the reactor refuses the descriptor.
pub fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` is a valid, open descriptor that only this `AsyncFd` can close,
    // and its `as_raw_fd` never changes: exactly the contract `register` asks for.
    #[allow(unsafe_code)]
    let registered = unsafe { AsyncFd::register_with_interest(fd, interest) };
    Ok(registered?)
}

impl AsFd for AsyncFdSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }
}

impl AsRawFd for AsyncFdSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.get_ref().as_raw_fd()
    }
}

impl From<AsyncFdSocket> for OwnedFd {
    fn from(socket: AsyncFdSocket) -> Self {
        socket.fd.into_inner()
    }
}

impl crate::FdSocket {
    /// Switches to non-blocking mode and registers with the current tokio runtime.
    ///
    /// # Errors
    /// Outside a tokio runtime, or when the descriptor cannot be registered.
    pub fn into_async(self) -> io::Result<AsyncFdSocket> {
        rustix::io::ioctl_fionbio(&self.fd, true)?;
        AsyncFdSocket::from_parts(self.fd, self.limits)
    }
}
