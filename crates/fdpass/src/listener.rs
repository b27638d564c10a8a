//! [`SeqpacketListener`]: accepting message-socket connections on a filesystem path.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::net::{SocketAddrUnix, SocketFlags};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::async_socket::register;
use crate::socket::new_seqpacket;
use crate::{AsyncFdSocket, Limits};

/// A listening `AF_UNIX` `SOCK_SEQPACKET` socket whose connections are [`AsyncFdSocket`]s.
///
/// Access control is the caller's: put the path in a private directory, set its mode, and
/// check the peer with `SO_PEERCRED` (`rustix::net::sockopt::socket_peercred`).
#[derive(Debug)]
pub struct SeqpacketListener {
    fd: AsyncFd<OwnedFd>,
}

impl SeqpacketListener {
    /// Binds and listens at `path` (which must not exist) with the given backlog.
    ///
    /// # Errors
    /// `EADDRINUSE` when the path exists, `EACCES`, `ENAMETOOLONG` (over 107 bytes), ...
    pub fn bind(path: &Path, backlog: i32) -> io::Result<Self> {
        let fd = new_seqpacket()?;
        rustix::net::bind(&fd, &SocketAddrUnix::new(path)?)?;
        rustix::net::listen(&fd, backlog)?;
        Ok(Self {
            fd: register(fd, Interest::READABLE)?,
        })
    }

    /// Accepts the next connection (close-on-exec, non-blocking).
    ///
    /// # Errors
    /// `EMFILE`/`ENFILE` when out of descriptors (back off before retrying), `ECONNABORTED`.
    pub async fn accept(&self) -> io::Result<AsyncFdSocket> {
        let fd = self
            .fd
            .async_io(Interest::READABLE, |fd| {
                let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
                Ok(rustix::net::accept_with(fd, flags)?)
            })
            .await?;
        AsyncFdSocket::from_parts(fd, Limits::default())
    }
}

impl AsFd for SeqpacketListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }
}

/// Accepts connections on any listening socket as plain descriptors, for a process that
/// hands them on instead of serving them: unlike `tokio::net::TcpListener::accept`, nothing
/// is registered with the reactor, which saves two `epoll_ctl` calls per connection.
#[derive(Debug)]
pub struct RawAcceptor {
    fd: AsyncFd<OwnedFd>,
}

impl RawAcceptor {
    /// Wraps a listening socket (it is switched to non-blocking mode).
    ///
    /// # Errors
    /// Outside a tokio runtime, or when the descriptor cannot be registered.
    pub fn new(listener: OwnedFd) -> io::Result<Self> {
        rustix::io::ioctl_fionbio(&listener, true)?;
        Ok(Self {
            fd: register(listener, Interest::READABLE)?,
        })
    }

    /// The next connection (close-on-exec, blocking mode) and, for IP sockets, the peer's
    /// address.
    ///
    /// # Errors
    /// `EMFILE`/`ENFILE` when out of descriptors (back off before retrying), `ECONNABORTED`.
    pub async fn accept(&self) -> io::Result<(OwnedFd, Option<std::net::SocketAddr>)> {
        self.fd
            .async_io(Interest::READABLE, |fd| {
                let (fd, peer) = rustix::net::acceptfrom_with(fd, SocketFlags::CLOEXEC)?;
                Ok((
                    fd,
                    peer.and_then(|p| std::net::SocketAddr::try_from(p).ok()),
                ))
            })
            .await
    }
}
