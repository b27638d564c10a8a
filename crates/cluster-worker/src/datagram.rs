//! UDP sockets for datagram servers: the one a `cluster --listen udp://…` or `quic://…`
//! (or systemd) handed this process, or one bound here standalone; and the readiness
//! notice a program given sockets sends (`READY=1` on `NOTIFY_SOCKET`).

use std::io;
use std::net::UdpSocket;

use cluster_ipc::ListenAddress;

use crate::WorkerError;

/// The UDP socket for `address` (`udp://HOST:PORT`, `quic://HOST:PORT` or `HOST:PORT`):
/// the inherited one bound there (port 0 matches any port on that IP) or named `name`, else
/// (standalone: no `LISTEN_FDS`) one bound here with `SO_REUSEPORT`. It is returned non-blocking, ready for
/// `tokio::net::UdpSocket::from_std` or a QUIC endpoint ([`quic::endpoint`](crate::quic)).
///
/// Under `quic://` each process gets a socket of its own in a group steered by connection
/// ID; it must put `CLUSTER_QUIC_CID_PREFIX` first in the IDs it issues (feature `quic`
/// does).
///
/// # Errors
/// An address that is not IP, or the bind's error.
pub fn udp_socket(address: &str, name: Option<&str>) -> Result<UdpSocket, WorkerError> {
    let parsed: ListenAddress = address.parse()?;
    let wanted = match parsed {
        ListenAddress::Tcp(addr) | ListenAddress::Udp(addr) => ListenAddress::Udp(addr),
        ListenAddress::Quic(addr) => ListenAddress::Quic(addr),
        ListenAddress::Unix(_) => {
            return Err(WorkerError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{address}: a UDP socket needs an IP address"),
            )));
        }
    };
    let fd = match crate::activation::take(&wanted, name) {
        Some(fd) => fd,
        // Given sockets, but not this one: a socket bound here would join the cluster's
        // `SO_REUSEPORT` group and take its share of packets that are not its own.
        None if std::env::var_os("LISTEN_FDS").is_some() => {
            return Err(WorkerError::Io(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{address}: no inherited UDP socket for it (LISTEN_FDS is set)"),
            )));
        }
        None => {
            let (ListenAddress::Udp(addr) | ListenAddress::Quic(addr)) = wanted else {
                unreachable!("made a datagram address above")
            };
            cluster_ipc::bind_datagram(addr)?
        }
    };
    let socket = UdpSocket::from(fd);
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Says `READY=1` on `NOTIFY_SOCKET` (a `cluster --listen` worker, a systemd service with
/// `Type=notify`); returns whether there was a socket to say it on. A program given
/// sockets calls it once it serves: the watcher then counts it ready at once instead of
/// after `--ready-after`.
///
/// # Errors
/// The send's error.
pub fn notify_ready() -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    socket.send_to(b"READY=1", path)?;
    Ok(true)
}
