//! Listening sockets inherited by socket activation (systemd, `systemd-socket-activate`,
//! `systemfd`, a `cluster --listen`): `LISTEN_FDS` descriptors from 3, for this process
//! (`LISTEN_PID` is our pid, or absent as `systemfd --no-pid` leaves it), named by
//! `LISTEN_FDNAMES`. A standalone [`listen`](crate::listen) adopts the one for its address
//! instead of binding.

use std::os::fd::OwnedFd;
use std::sync::OnceLock;

use parking_lot::Mutex;

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
            local: ListenAddress::of(&socket.fd).ok(),
            name: socket.name,
            fd: socket.fd,
        })
        .collect()
}

/// Takes the inherited listener for `address`: the one bound to it (port 0 matches any
/// port on that IP), or the one named like it (`listen("http")` under systemd).
pub(crate) fn take(address: &ListenAddress, name: Option<&str>) -> Option<OwnedFd> {
    let mut inherited = inherited().lock();
    let position = inherited.iter().position(|i| {
        let by_address = i.local.as_ref().is_some_and(|local| local.serves(address));
        by_address || (name.is_some() && i.name.as_deref() == name)
    })?;
    Some(inherited.remove(position).fd)
}
