//! Socket activation's side of the handshake: the listening sockets a service manager
//! (systemd, `systemd-socket-activate`, `systemfd`, `cluster --listen`) handed this process.

use std::os::fd::OwnedFd;

/// The first inherited descriptor (`SD_LISTEN_FDS_START`).
const FIRST: i32 = 3;

/// One inherited socket and its name in `LISTEN_FDNAMES`.
#[derive(Debug)]
pub struct ActivatedSocket {
    /// Its name, if the manager gave names.
    pub name: Option<String>,
    /// The descriptor, now owned here and close-on-exec.
    pub fd: OwnedFd,
}

/// Takes the `LISTEN_FDS` descriptors (from 3) meant for this process: `LISTEN_PID` is our
/// pid, or absent (as `systemfd --no-pid` leaves it). Each is adopted once
/// ([`fdpass::adopt_inherited_fd`]): a second call returns nothing. The variables are left
/// as they are (changing the environment of a running program is not thread-safe).
pub fn activated_sockets() -> Vec<ActivatedSocket> {
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    let ours = std::env::var("LISTEN_PID").map_or(true, |pid| {
        pid.parse::<u32>().ok() == Some(std::process::id())
    });
    if count <= 0 || !ours {
        return Vec::new();
    }
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|n| n.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    (0..count.min(256))
        .filter_map(|index| {
            // Refuses a descriptor that is close-on-exec (so not inherited) or taken already.
            let fd = fdpass::adopt_inherited_fd(FIRST + index).ok()?;
            Some(ActivatedSocket {
                name: names.get(index as usize).cloned(),
                fd,
            })
        })
        .collect()
}
