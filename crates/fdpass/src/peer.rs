//! [`peer_credentials`]: who is at the other end of a Unix socket.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// The process at the other end of a connected Unix socket, as the kernel recorded it
/// when the connection was made (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    /// Its pid; `None` when it lives in another PID namespace (the kernel reports 0 then).
    pub pid: Option<u32>,
    /// Its effective user id.
    pub uid: u32,
    /// Its effective group id.
    pub gid: u32,
}

/// Reads `SO_PEERCRED` of `socket`.
///
/// Unlike `rustix::net::sockopt::socket_peercred`, whose pid type cannot be zero, a peer in
/// another PID namespace (a sidecar container, the host talking to a containerized
/// process) is fine here: its pid is `None`.
///
/// # Errors
/// Not a connected Unix socket.
pub fn peer_credentials(socket: impl AsFd) -> io::Result<PeerCredentials> {
    let mut credentials = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut size = libc::socklen_t::try_from(size_of::<libc::ucred>()).expect("small");
    // SAFETY: `credentials` and `size` describe a writable buffer of that size; the kernel
    // writes at most `size` bytes of plain integers and updates `size`.
    #[allow(unsafe_code)]
    let result = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut credentials).cast(),
            &raw mut size,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(PeerCredentials {
        pid: u32::try_from(credentials.pid).ok().filter(|&pid| pid != 0),
        uid: credentials.uid,
        gid: credentials.gid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_pair_peer_is_this_process() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let peer = peer_credentials(&a).unwrap();
        assert_eq!(peer.pid, Some(std::process::id()));
        assert_eq!(peer.uid, rustix::process::geteuid().as_raw());
    }

    #[test]
    fn a_non_socket_is_an_error() {
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        assert!(peer_credentials(&file).is_err());
    }
}
