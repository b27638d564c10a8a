//! The blocking [`FdSocket`] and the per-socket state it shares with the async one.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rustix::net::{AddressFamily, SocketFlags, SocketType};

use crate::frame::{self, CONTINUATION_HEADER, MAX_CHUNK, MAX_PACKET, Reassembly, Step};
use crate::raw::{self, Packet};
use crate::{Error, Limits, Message, SocketKindError};

/// Buffers and reassembly state of a receiving socket, kept between calls.
#[derive(Debug)]
pub(crate) struct RecvState {
    pub(crate) buf: Vec<u8>,
    pub(crate) cmsg: Vec<MaybeUninit<u8>>,
    reassembly: Reassembly,
}

/// What one packet did to the receive state.
pub(crate) enum Progress {
    Message(Message),
    Eof,
    More,
}

impl RecvState {
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            // One byte more than the largest legal packet, so an oversized one shows as
            // truncated instead of fitting exactly.
            buf: vec![0; MAX_PACKET + 1],
            cmsg: vec![MaybeUninit::uninit(); raw::cmsg_space(limits.get_max_fds())],
            reassembly: Reassembly::default(),
        }
    }

    /// Feeds the outcome of one `recv_packet` into the reassembly.
    pub(crate) fn absorb(
        &mut self,
        packet: Result<Packet, Error>,
        limits: &Limits,
    ) -> Result<Progress, Error> {
        let (len, fds) = packet?;
        if len == 0 && fds.is_empty() {
            self.reassembly.on_eof()?;
            return Ok(Progress::Eof);
        }
        match self.reassembly.on_packet(&self.buf[..len], fds, limits)? {
            Step::Complete(message) => Ok(Progress::Message(message)),
            Step::NeedMore => Ok(Progress::More),
        }
    }
}

/// Yields the continuation packets of `rest`, each ready for one `sendmsg`.
pub(crate) fn continuations(rest: &[u8]) -> impl Iterator<Item = [IoSlice<'_>; 2]> {
    rest.chunks(MAX_CHUNK)
        .map(|chunk| [IoSlice::new(&CONTINUATION_HEADER), IoSlice::new(chunk)])
}

/// Creates a connected pair of `AF_UNIX` `SOCK_SEQPACKET` sockets, both close-on-exec,
/// blocking or not.
pub(crate) fn seqpacket_pair(nonblocking: bool) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut flags = SocketFlags::CLOEXEC;
    if nonblocking {
        flags |= SocketFlags::NONBLOCK;
    }
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        flags,
        None,
    )?)
}

/// Checks that `fd` is an `AF_UNIX` `SOCK_SEQPACKET` socket and sets its blocking mode.
pub(crate) fn adopt_seqpacket(fd: &OwnedFd, nonblocking: bool) -> Result<(), SocketKindError> {
    let kind = crate::SocketKind::of(fd)?;
    if kind.domain != AddressFamily::UNIX || kind.type_ != SocketType::SEQPACKET {
        return Err(SocketKindError::Mismatch {
            expected: "a Unix SOCK_SEQPACKET socket",
            found: kind.to_string(),
        });
    }
    rustix::io::ioctl_fionbio(fd, nonblocking).map_err(io::Error::from)?;
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state is consistent between packets, so a panic elsewhere does not taint it.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A blocking message socket that carries bytes and descriptors together.
///
/// Built on `AF_UNIX` `SOCK_SEQPACKET`: every message keeps its boundaries and its descriptors
/// travel inside its first packet, so the two can never drift apart. Messages up to
/// [`MAX_CHUNK`] bytes are a single packet; larger ones (up to [`Limits::max_message_len`]) are
/// split and put back together transparently. `send` and `recv` may be called from different
/// threads at once; concurrent senders are serialised so their packets never interleave.
///
/// ```
/// use std::os::fd::AsFd;
/// let (a, b) = fdpass::FdSocket::pair()?;
/// let file = std::fs::File::open("/dev/null")?;
/// a.send(b"here is a file", &[file.as_fd()])?;
/// let message = b.recv()?.expect("peer still open");
/// assert_eq!(message.data, b"here is a file");
/// assert_eq!(message.fds.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct FdSocket {
    pub(crate) fd: OwnedFd,
    pub(crate) limits: Limits,
    send_lock: Mutex<()>,
    recv: Mutex<RecvState>,
}

impl FdSocket {
    /// Creates a connected pair with default [`Limits`].
    ///
    /// # Errors
    /// When the system is out of descriptors or memory.
    pub fn pair() -> io::Result<(Self, Self)> {
        let (a, b) = seqpacket_pair(false)?;
        Ok((
            Self::new(a, Limits::default()),
            Self::new(b, Limits::default()),
        ))
    }

    /// Adopts an existing `AF_UNIX` `SOCK_SEQPACKET` socket (for example one inherited from a
    /// parent), switching it to blocking mode.
    ///
    /// # Errors
    /// [`SocketKindError::Mismatch`] when `fd` is another kind of descriptor; it is closed.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, SocketKindError> {
        adopt_seqpacket(&fd, false)?;
        Ok(Self::new(fd, Limits::default()))
    }

    fn new(fd: OwnedFd, limits: Limits) -> Self {
        Self {
            fd,
            limits,
            send_lock: Mutex::new(()),
            recv: Mutex::new(RecvState::new(&limits)),
        }
    }

    /// Replaces the limits enforced on both directions.
    #[must_use]
    pub fn with_limits(self, limits: Limits) -> Self {
        Self::new(self.fd, limits)
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Bounds how long [`recv`](Self::recv) waits (`SO_RCVTIMEO`); `None` waits forever.
    /// A receive that times out fails with an [`Error::Io`] of kind `WouldBlock`, and a
    /// message that was half received stays buffered for the next call.
    ///
    /// # Errors
    /// When the socket option cannot be set.
    pub fn set_recv_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        Ok(rustix::net::sockopt::set_socket_timeout(
            &self.fd,
            rustix::net::sockopt::Timeout::Recv,
            timeout,
        )?)
    }

    /// Sends one message: `data` with `fds` attached. The descriptors stay open in this
    /// process; the peer receives duplicates.
    ///
    /// # Errors
    /// [`Error::TooManyFds`] / [`Error::MessageTooLarge`] before anything is sent;
    /// [`Error::Io`] when the socket fails (`EPIPE` once the peer is gone).
    pub fn send(&self, data: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), Error> {
        let header = frame::first_header(data.len(), fds.len(), &self.limits)?;
        let (first, rest) = frame::split_first(data);
        let _serialised = lock(&self.send_lock);
        raw::send_packet(
            self.fd.as_fd(),
            &[IoSlice::new(&header), IoSlice::new(first)],
            fds,
        )?;
        for packet in continuations(rest) {
            raw::send_packet(self.fd.as_fd(), &packet, &[])?;
        }
        Ok(())
    }

    /// Receives the next whole message, or `None` when the peer closed the socket between
    /// messages.
    ///
    /// # Errors
    /// Any protocol violation of [`Error`]; the offending descriptors are closed.
    pub fn recv(&self) -> Result<Option<Message>, Error> {
        let mut guard = lock(&self.recv);
        let state = &mut *guard;
        loop {
            let packet = raw::recv_packet(self.fd.as_fd(), &mut state.buf, &mut state.cmsg)?;
            match state.absorb(packet, &self.limits)? {
                Progress::Message(message) => return Ok(Some(message)),
                Progress::Eof => return Ok(None),
                Progress::More => {}
            }
        }
    }
}

impl AsFd for FdSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for FdSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl From<FdSocket> for OwnedFd {
    fn from(socket: FdSocket) -> Self {
        socket.fd
    }
}

/// A fresh unconnected `AF_UNIX` `SOCK_SEQPACKET` socket, close-on-exec and non-blocking.
pub(crate) fn new_seqpacket() -> io::Result<OwnedFd> {
    let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
    Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        flags,
        None,
    )?)
}
