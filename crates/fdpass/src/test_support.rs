//! What the steering tests share: a `SO_REUSEPORT` group on 127.0.0.1, and which member a
//! connection landed on.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;

/// A listening `SO_REUSEPORT` socket on 127.0.0.1:`port` (0: a free port).
pub(crate) fn reuseport_listener(port: u16) -> OwnedFd {
    use rustix::net::{AddressFamily, SocketType, bind, listen, socket, sockopt};
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    sockopt::set_socket_reuseport(&fd, true).unwrap();
    bind(&fd, &SocketAddr::from((Ipv4Addr::LOCALHOST, port))).unwrap();
    listen(&fd, 128).unwrap();
    fd
}

/// A group of `members` sockets on one free port, and the port.
pub(crate) fn group(members: usize) -> (Vec<OwnedFd>, u16) {
    let first = reuseport_listener(0);
    let port = rustix::net::getsockname(&first)
        .ok()
        .and_then(|a| SocketAddr::try_from(a).ok())
        .unwrap()
        .port();
    let mut listeners = vec![first];
    listeners.extend((1..members).map(|_| reuseport_listener(port)));
    (listeners, port)
}

/// Which of `listeners` has the connection just made queued; accepts (and drops) it.
pub(crate) fn landed_on(listeners: &[OwnedFd]) -> usize {
    for _ in 0..200 {
        for (i, listener) in listeners.iter().enumerate() {
            if crate::listen_queue(listener).unwrap().queued > 0 {
                drop(rustix::net::accept(listener).unwrap());
                return i;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    panic!("no listener got the connection");
}
