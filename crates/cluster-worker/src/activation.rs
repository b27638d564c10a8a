//! Listening sockets inherited by socket activation (systemd, `systemd-socket-activate`,
//! `systemfd`, a `cluster --listen`): `LISTEN_FDS` descriptors from 3, for this process
//! (`LISTEN_PID` is our pid, or absent as `systemfd --no-pid` leaves it), named by
//! `LISTEN_FDNAMES`. A standalone [`listen`](crate::listen) adopts the one for its address
//! instead of binding.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::{Mutex, OnceLock, PoisonError};

use cluster_ipc::ListenAddress;

#[derive(Debug)]
struct Inherited {
    name: Option<String>,
    local: Option<ListenAddress>,
    fd: OwnedFd,
}

static INHERITED: OnceLock<Mutex<Vec<Inherited>>> = OnceLock::new();

fn inherited() -> &'static Mutex<Vec<Inherited>> {
    INHERITED.get_or_init(|| Mutex::new(read()))
}

fn read() -> Vec<Inherited> {
    cluster_ipc::activated_sockets()
        .into_iter()
        .map(|socket| Inherited {
            local: local_address(&socket.fd),
            name: socket.name,
            fd: socket.fd,
        })
        .collect()
}

fn local_address(fd: &OwnedFd) -> Option<ListenAddress> {
    let address = rustix::net::getsockname(fd).ok()?;
    if let Ok(unix) = rustix::net::SocketAddrUnix::try_from(address.clone()) {
        return Some(ListenAddress::Unix(
            unix.path()?.to_string_lossy().into_owned().into(),
        ));
    }
    SocketAddr::try_from(address).ok().map(ListenAddress::Tcp)
}

/// Takes the inherited listener for `address`: the one bound to it (port 0 matches any
/// port on that IP), or the one named like it (`listen("http")` under systemd).
pub(crate) fn take(address: &ListenAddress, name: Option<&str>) -> Option<OwnedFd> {
    let mut inherited = inherited().lock().unwrap_or_else(PoisonError::into_inner);
    let position = inherited.iter().position(|i| {
        let by_address = match (&i.local, address) {
            (Some(ListenAddress::Tcp(local)), ListenAddress::Tcp(wanted)) => {
                local == wanted || (wanted.port() == 0 && local.ip() == wanted.ip())
            }
            (Some(local), wanted) => local == wanted,
            (None, _) => false,
        };
        by_address || (name.is_some() && i.name.as_deref() == name)
    })?;
    Some(inherited.remove(position).fd)
}
