//! Where to listen and how: [`ListenAddress`] and [`ListenOptions`].

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::str::FromStr;

use rustix::net::SocketAddrUnix;
use serde::{Deserialize, Serialize};

use crate::ServerSocketError;

/// Where to listen: a TCP address (IPv4 or IPv6), a Unix socket path, or a UDP address
/// (plain datagrams, or QUIC steered by connection ID).
///
/// Parsed from `127.0.0.1:8080`, `[::1]:0`, `tcp://127.0.0.1:80`, `localhost:3000`
/// (= `127.0.0.1:3000`), `unix:/run/app.sock`, `unix:///run/app.sock`, a path starting
/// with `/` or `./`, `udp://127.0.0.1:53` or `quic://[::1]:443`.
///
/// ```
/// use cluster_ipc::ListenAddress;
/// let tcp: ListenAddress = "localhost:0".parse()?;
/// assert_eq!(tcp.to_string(), "127.0.0.1:0");
/// let unix: ListenAddress = "unix:///tmp/app.sock".parse()?;
/// assert_eq!(unix.to_string(), "unix:/tmp/app.sock");
/// let quic: ListenAddress = "quic://localhost:4433".parse()?;
/// assert_eq!(quic.to_string(), "quic://127.0.0.1:4433");
/// assert!(quic.is_datagram());
/// assert!("999.1.1.1:80".parse::<ListenAddress>().is_err());
/// # Ok::<(), cluster_ipc::ServerSocketError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ListenAddress {
    /// A TCP socket address.
    Tcp(SocketAddr),
    /// A Unix stream socket at this path.
    Unix(PathBuf),
    /// UDP sockets, one per worker slot in a `SO_REUSEPORT` group: the kernel hashes each
    /// flow (source and destination) to a slot.
    Udp(SocketAddr),
    /// UDP sockets for QUIC, one per worker process in a `SO_REUSEPORT` group steered by
    /// connection ID (`fdpass::steer_quic`): a connection's packets reach the process that
    /// holds it through restarts, new connections the processes that are ready.
    Quic(SocketAddr),
}

impl FromStr for ListenAddress {
    type Err = ServerSocketError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(ServerSocketError::InvalidAddress(s.to_owned()));
            }
            return Ok(Self::Unix(path.into()));
        }
        if s.starts_with('/') || s.starts_with("./") {
            return Ok(Self::Unix(s.into()));
        }
        let invalid = || ServerSocketError::InvalidAddress(s.to_owned());
        if let Some(udp) = s.strip_prefix("udp://") {
            return ip_address(udp).map(Self::Udp).ok_or_else(invalid);
        }
        if let Some(quic) = s.strip_prefix("quic://") {
            return ip_address(quic).map(Self::Quic).ok_or_else(invalid);
        }
        let tcp = s.strip_prefix("tcp://").unwrap_or(s);
        ip_address(tcp).map(Self::Tcp).ok_or_else(invalid)
    }
}

/// `IP:PORT`, `[IPv6]:PORT` or `localhost:PORT` (= `127.0.0.1`).
fn ip_address(s: &str) -> Option<SocketAddr> {
    if let Some(port) = s.strip_prefix("localhost:") {
        return Some(SocketAddr::from(([127, 0, 0, 1], port.parse().ok()?)));
    }
    s.parse().ok()
}

impl ListenAddress {
    /// The address a socket is bound to (with the real port when port 0 was asked for).
    ///
    /// # Errors
    /// When `getsockname` fails or the socket is neither IP nor Unix.
    pub fn of(socket: impl AsFd) -> io::Result<Self> {
        let addr = rustix::net::getsockname(&socket)?;
        if let Ok(unix) = SocketAddrUnix::try_from(addr.clone()) {
            return Ok(Self::Unix(
                unix.path()
                    .map(|p| PathBuf::from(p.to_string_lossy().into_owned()))
                    .unwrap_or_default(),
            ));
        }
        let ip =
            SocketAddr::try_from(addr).map_err(|_| io::Error::other("not an IP or Unix socket"))?;
        if rustix::net::sockopt::socket_type(socket)? == rustix::net::SocketType::DGRAM {
            return Ok(Self::Udp(ip));
        }
        Ok(Self::Tcp(ip))
    }

    /// A UDP address (plain or QUIC): sockets bound for it are datagram sockets, never
    /// listened on.
    pub fn is_datagram(&self) -> bool {
        matches!(self, Self::Udp(_) | Self::Quic(_))
    }

    /// Whether a socket bound to this address serves a request for `wanted`: the same
    /// address, or port 0 on the same IP (what an inherited socket answers for).
    pub fn serves(&self, wanted: &Self) -> bool {
        match (self, wanted) {
            (Self::Tcp(local), Self::Tcp(wanted))
            | (Self::Udp(local), Self::Udp(wanted) | Self::Quic(wanted)) => {
                local == wanted || (wanted.port() == 0 && local.ip() == wanted.ip())
            }
            (local, wanted) => local == wanted,
        }
    }
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Udp(addr) => write!(f, "udp://{addr}"),
            Self::Quic(addr) => write!(f, "quic://{addr}"),
        }
    }
}

/// How to bind and listen. Equal options on an equal address share one socket.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ListenOptions {
    /// `listen()` backlog (default 1024; the kernel caps it at `net.core.somaxconn`).
    pub backlog: u32,
    /// `SO_REUSEPORT` (default off: one shared queue balances by idle workers).
    pub reuse_port: bool,
    /// `IPV6_V6ONLY` for IPv6 addresses (default on, so `[::]` does not also take IPv4).
    pub ipv6_only: bool,
}

impl Default for ListenOptions {
    fn default() -> Self {
        Self {
            backlog: 1024,
            reuse_port: false,
            ipv6_only: true,
        }
    }
}
