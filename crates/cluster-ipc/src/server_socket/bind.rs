//! Binding here: [`bind_listener`], the [`Listener`] it becomes, and the
//! [`ServerSocketFactory`] trait with its local implementation.

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType, sockopt};

use crate::{ChannelError, ListenAddress, ListenOptions, ServerSocketError};

/// A listening socket, registered with tokio.
#[derive(Debug)]
pub enum Listener {
    /// A TCP listener.
    Tcp(tokio::net::TcpListener),
    /// A Unix stream listener.
    Unix(tokio::net::UnixListener),
}

impl Listener {
    /// Wraps a listening descriptor of either kind.
    ///
    /// # Errors
    /// When it is neither a listening TCP nor Unix stream socket (it is closed), or cannot be
    /// registered with the runtime.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, ServerSocketError> {
        let kind = fdpass::SocketKind::of(&fd).map_err(ServerSocketError::Register)?;
        let adopted = if kind.domain == AddressFamily::UNIX {
            fdpass::into_socket(fd).map(Self::Unix)
        } else {
            fdpass::into_socket(fd).map(Self::Tcp)
        };
        adopted.map_err(|e| ServerSocketError::Channel(ChannelError::SocketKind(e)))
    }

    /// The address actually bound (with the real port when port 0 was asked for).
    ///
    /// # Errors
    /// When `getsockname` fails.
    pub fn local_addr(&self) -> io::Result<ListenAddress> {
        match self {
            Self::Tcp(l) => l.local_addr().map(ListenAddress::Tcp),
            Self::Unix(l) => {
                let addr = l.local_addr()?;
                Ok(ListenAddress::Unix(
                    addr.as_pathname().map(PathBuf::from).unwrap_or_default(),
                ))
            }
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Self::Tcp(l) => l.as_fd(),
            Self::Unix(l) => l.as_fd(),
        }
    }
}

/// Something that produces listening sockets: bound here ([`LocalServerSocketFactory`]) or
/// obtained from another process ([`ServerSocketPipeFactory`](crate::ServerSocketPipeFactory)). Code written against this
/// trait runs unchanged in a cluster and standalone.
pub trait ServerSocketFactory {
    /// A listener on `address` with `options`.
    fn listen(
        &self,
        address: &ListenAddress,
        options: &ListenOptions,
    ) -> impl Future<Output = Result<Listener, ServerSocketError>> + Send;
}

/// Binds in this process.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalServerSocketFactory;

impl ServerSocketFactory for LocalServerSocketFactory {
    async fn listen(
        &self,
        address: &ListenAddress,
        options: &ListenOptions,
    ) -> Result<Listener, ServerSocketError> {
        let fd = bind_listener(address, options)?;
        Listener::from_fd(fd)
    }
}

/// Binds and listens on `address`, close-on-exec and non-blocking.
///
/// TCP sockets get `SO_REUSEADDR` so a restart is not refused while old connections sit in
/// `TIME_WAIT`. A Unix path left behind by a dead process (nobody accepts on it) is replaced;
/// a live one is `EADDRINUSE`.
///
/// # Errors
/// [`ServerSocketError::Bind`] with the OS error.
pub fn bind_listener(
    address: &ListenAddress,
    options: &ListenOptions,
) -> Result<OwnedFd, ServerSocketError> {
    bind_inner(address, options).map_err(|source| ServerSocketError::Bind {
        address: address.to_string(),
        source,
    })
}

fn bind_inner(address: &ListenAddress, options: &ListenOptions) -> io::Result<OwnedFd> {
    let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
    let backlog = i32::try_from(options.backlog).unwrap_or(i32::MAX);
    match address {
        ListenAddress::Tcp(addr) => {
            let family = if addr.is_ipv4() {
                AddressFamily::INET
            } else {
                AddressFamily::INET6
            };
            let fd = rustix::net::socket_with(family, SocketType::STREAM, flags, None)?;
            sockopt::set_socket_reuseaddr(&fd, true)?;
            if options.reuse_port {
                sockopt::set_socket_reuseport(&fd, true)?;
            }
            if addr.is_ipv6() {
                sockopt::set_ipv6_v6only(&fd, options.ipv6_only)?;
            }
            rustix::net::bind(&fd, addr)?;
            rustix::net::listen(&fd, backlog)?;
            Ok(fd)
        }
        ListenAddress::Udp(addr) | ListenAddress::Quic(addr) => bind_datagram(*addr),
        ListenAddress::Unix(path) => {
            let unix = SocketAddrUnix::new(path.as_path())?;
            let fd =
                rustix::net::socket_with(AddressFamily::UNIX, SocketType::STREAM, flags, None)?;
            match rustix::net::bind(&fd, &unix) {
                Err(Errno::ADDRINUSE) if is_stale(&unix) => {
                    std::fs::remove_file(path)?;
                    rustix::net::bind(&fd, &unix)?;
                }
                other => other?,
            }
            rustix::net::listen(&fd, backlog)?;
            Ok(fd)
        }
    }
}

/// A UDP socket on `addr` with `SO_REUSEPORT` (every datagram address is a group of one
/// socket per slot or per process), close-on-exec and non-blocking.
///
/// # Errors
/// The OS error.
pub fn bind_datagram(addr: std::net::SocketAddr) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
    let fd = rustix::net::socket_with(family, SocketType::DGRAM, flags, None)?;
    sockopt::set_socket_reuseport(&fd, true)?;
    if addr.is_ipv6() {
        sockopt::set_ipv6_v6only(&fd, true)?;
    }
    rustix::net::bind(&fd, &addr)?;
    Ok(fd)
}

/// A Unix socket path nobody listens on any more.
fn is_stale(address: &SocketAddrUnix) -> bool {
    let Ok(probe) = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    ) else {
        return false;
    };
    rustix::net::connect(&probe, address) == Err(Errno::CONNREFUSED)
}
