//! Turning a received descriptor into a typed socket, after checking that it is one.

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;

use rustix::net::{AddressFamily, SocketType, sockopt};

use crate::SocketKindError;

/// What kind of socket a descriptor is, read with `getsockopt` (`SO_DOMAIN`, `SO_TYPE`,
/// `SO_ACCEPTCONN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketKind {
    /// Address family: `INET`, `INET6`, `UNIX`, ...
    pub domain: AddressFamily,
    /// `STREAM`, `DGRAM`, `SEQPACKET`, ...
    pub type_: SocketType,
    /// Whether `listen()` was called on it.
    pub listening: bool,
}

impl SocketKind {
    /// Inspects a descriptor.
    ///
    /// # Errors
    /// `ENOTSOCK` when the descriptor is not a socket at all.
    pub fn of(fd: impl std::os::fd::AsFd) -> io::Result<Self> {
        let fd = fd.as_fd();
        Ok(Self {
            domain: sockopt::socket_domain(fd)?,
            type_: sockopt::socket_type(fd)?,
            listening: sockopt::socket_acceptconn(fd)?,
        })
    }

    fn is_inet(&self) -> bool {
        self.domain == AddressFamily::INET || self.domain == AddressFamily::INET6
    }
}

impl fmt::Display for SocketKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let domain = match self.domain {
            AddressFamily::INET => "IPv4",
            AddressFamily::INET6 => "IPv6",
            AddressFamily::UNIX => "Unix",
            _ => "other-family",
        };
        let type_ = match self.type_ {
            SocketType::STREAM => "stream",
            SocketType::DGRAM => "datagram",
            SocketType::SEQPACKET => "seqpacket",
            _ => "other-type",
        };
        let state = if self.listening { " (listening)" } else { "" };
        write!(f, "{domain} {type_} socket{state}")
    }
}

/// A socket type that can be built from a received descriptor once its kind is checked.
///
/// Implemented for the `std` and `tokio` TCP, Unix and UDP socket types, and for `OwnedFd`
/// (any socket, for a process that only passes descriptors on). Use it through
/// [`into_socket`]. The tokio types must be built inside a runtime.
pub trait FromSocketFd: Sized {
    /// What the descriptor must be, in words, for error messages.
    const EXPECTED: &'static str;

    /// Whether a socket of `kind` can become `Self`.
    fn accepts(kind: &SocketKind) -> bool;

    /// Wraps a descriptor already known to be of the right kind.
    ///
    /// # Errors
    /// When wrapping needs a system call that fails (tokio's registration).
    fn wrap(fd: OwnedFd) -> io::Result<Self>;

    /// Wraps a descriptor already known to be of the right kind and non-blocking (the
    /// tokio types skip setting `O_NONBLOCK`).
    ///
    /// # Errors
    /// As [`wrap`](Self::wrap).
    fn wrap_nonblocking(fd: OwnedFd) -> io::Result<Self> {
        Self::wrap(fd)
    }
}

/// Wraps `fd` as `T` without looking at it: for a descriptor whose sender vouches that it
/// is the right kind and already non-blocking, such as a supervisor that accepted it with
/// `SOCK_NONBLOCK` and checked everything else it passes on. It saves the three
/// `getsockopt` calls of [`into_socket`]'s check and the `ioctl` that sets `O_NONBLOCK`.
/// Nothing unsafe follows from a sender that lies, but a wrong kind makes the socket's
/// calls fail, and a blocking descriptor blocks a tokio runtime on its first read: use
/// [`into_socket`] for anything a peer could choose.
///
/// # Errors
/// When tokio's registration fails.
pub fn into_socket_vouched<T: FromSocketFd>(fd: OwnedFd) -> io::Result<T> {
    T::wrap_nonblocking(fd)
}

/// Checks that `fd` is the kind of socket `T` needs and wraps it.
///
/// ```
/// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let fd = std::os::fd::OwnedFd::from(listener);
/// let listener: std::net::TcpListener = fdpass::into_socket(fd)?;
/// // A listening socket is not a connected stream:
/// let fd = std::os::fd::OwnedFd::from(listener);
/// assert!(fdpass::into_socket::<std::net::TcpStream>(fd).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`SocketKindError::Mismatch`] when it is another kind (the descriptor is closed);
/// [`SocketKindError::Io`] when it is not a socket or cannot be registered.
pub fn into_socket<T: FromSocketFd>(fd: OwnedFd) -> Result<T, SocketKindError> {
    let kind = SocketKind::of(&fd)?;
    if !T::accepts(&kind) {
        return Err(SocketKindError::Mismatch {
            expected: T::EXPECTED,
            found: kind.to_string(),
        });
    }
    Ok(T::wrap(fd)?)
}

fn tcp_listener(k: &SocketKind) -> bool {
    k.is_inet() && k.type_ == SocketType::STREAM && k.listening
}
fn tcp_stream(k: &SocketKind) -> bool {
    k.is_inet() && k.type_ == SocketType::STREAM && !k.listening
}
fn unix_listener(k: &SocketKind) -> bool {
    k.domain == AddressFamily::UNIX && k.type_ == SocketType::STREAM && k.listening
}
fn unix_stream(k: &SocketKind) -> bool {
    k.domain == AddressFamily::UNIX && k.type_ == SocketType::STREAM && !k.listening
}
fn udp_socket(k: &SocketKind) -> bool {
    k.is_inet() && k.type_ == SocketType::DGRAM
}

macro_rules! from_socket_fd {
    ($($std:ty, $tokio:ty, $accepts:ident, $expected:literal;)*) => {$(
        impl FromSocketFd for $std {
            const EXPECTED: &'static str = $expected;
            fn accepts(kind: &SocketKind) -> bool {
                $accepts(kind)
            }
            fn wrap(fd: OwnedFd) -> io::Result<Self> {
                Ok(Self::from(fd))
            }
        }
        impl FromSocketFd for $tokio {
            const EXPECTED: &'static str = $expected;
            fn accepts(kind: &SocketKind) -> bool {
                $accepts(kind)
            }
            fn wrap(fd: OwnedFd) -> io::Result<Self> {
                let socket = <$std>::from(fd);
                socket.set_nonblocking(true)?;
                Self::from_std(socket)
            }
            fn wrap_nonblocking(fd: OwnedFd) -> io::Result<Self> {
                Self::from_std(<$std>::from(fd))
            }
        }
    )*};
}

impl FromSocketFd for OwnedFd {
    const EXPECTED: &'static str = "a socket";
    fn accepts(_: &SocketKind) -> bool {
        true
    }
    fn wrap(fd: OwnedFd) -> io::Result<Self> {
        Ok(fd)
    }
}

from_socket_fd! {
    std::net::TcpListener, tokio::net::TcpListener, tcp_listener, "a listening TCP socket";
    std::net::TcpStream, tokio::net::TcpStream, tcp_stream, "a connected TCP socket";
    std::os::unix::net::UnixListener, tokio::net::UnixListener, unix_listener, "a listening Unix stream socket";
    std::os::unix::net::UnixStream, tokio::net::UnixStream, unix_stream, "a connected Unix stream socket";
    std::net::UdpSocket, tokio::net::UdpSocket, udp_socket, "a UDP socket";
}
