//! Send and receive file descriptors together with bytes over Unix sockets, with no leaks.
//!
//! This is the lowest layer of the `cluster` workspace and the only one that touches
//! `SCM_RIGHTS`. Everything above it moves descriptors as [`OwnedFd`]s inside [`Message`]s and
//! never has to think about control buffers, truncation or close-on-exec again.
//!
//! # A guided tour
//!
//! * [`FdSocket`] (blocking) and [`AsyncFdSocket`] (tokio) are message sockets over
//!   `AF_UNIX` `SOCK_SEQPACKET` pairs. [`FdSocket::pair`] makes a pair; `from_fd` adopts one
//!   inherited from a parent. `send(data, fds)` sends one message; `recv()` returns the next
//!   whole [`Message`] or `None` at end of file. [`AsyncFdSocket::try_send`] sends only if
//!   the peer's queue has room now, for a balancer that would rather try another peer.
//! * [`SeqpacketListener`] accepts such sockets on a filesystem path;
//!   [`AsyncFdSocket::connect`] is the other side. [`RawAcceptor`] accepts TCP or Unix
//!   connections as bare descriptors, for a process that only hands them on.
//! * [`Limits`] bound what a peer may send: payload size (default 16 MiB) and descriptors per
//!   message (default and ceiling [`MAX_FDS`] = 253, the kernel's `SCM_MAX_FD`).
//! * [`into_socket`] turns a received descriptor into a `std` or `tokio` `TcpListener`,
//!   `TcpStream`, `UnixListener`, `UnixStream` or `UdpSocket`, after checking with
//!   `getsockopt` that it really is one ([`SocketKind`]).
//! * [`into_socket_vouched`] skips that check (and setting `O_NONBLOCK`) for a sender that
//!   vouches for both: four system calls less a descriptor.
//! * [`send_raw`] and [`recv_raw`] are single `sendmsg`/`recvmsg` calls without this crate's
//!   framing, for talking to other implementations such as `passfd` or C programs.
//! * [`inherit_fd`] hands a descriptor to a child process on purpose: it stays close-on-exec
//!   here and is cleared only in the forked child; [`adopt_inherited_fd`] is the child's side;
//!   [`kill_with_parent`] makes a child die with its supervisor from its first instruction;
//!   [`join_cgroup`] puts it in a cgroup before it runs (so its descendants can be found).
//! * [`steer_reuseport`] attaches a classic-BPF program that sends a `SO_REUSEPORT` group's
//!   new connections to chosen members only, at random; [`RoundRobinSteering`] does it in
//!   strict turn with eBPF where that is allowed (`CAP_BPF`); [`steer_reuseport_by_source`]
//!   keeps each client address on one member, [`steer_reuseport_by_cpu`] each connection on
//!   a member pinned to the CPU it arrives on; [`listen_queue`] reads a listener's accept
//!   queue (`TCP_INFO`). [`steer_quic`] steers a group of UDP sockets by QUIC connection
//!   ID: each process puts [`quic_cid_prefix`] in the IDs it issues, and its connections'
//!   packets keep reaching it while new connections go to the members that accept.
//! * [`peer_credentials`] says who is at the other end of a Unix socket (`SO_PEERCRED`),
//!   also when it lives in another PID namespace.
//! * [`Error`] is what can go wrong on the wire; [`SocketKindError`] what can go wrong when
//!   adopting a descriptor.
//!
//! # Guarantees
//!
//! * Every received descriptor is close-on-exec from birth (`MSG_CMSG_CLOEXEC`), so a child
//!   spawned concurrently by another thread never inherits it.
//! * Sends use `MSG_NOSIGNAL`: a vanished peer is an `EPIPE` error, not a dead process.
//! * On any error after a `recvmsg` (truncated control data, too many or too few descriptors
//!   for what the header declares, credentials instead of descriptors, a malformed packet, a
//!   peer that closes mid-message) every descriptor that arrived is closed before the error is
//!   returned.
//! * Descriptors and the bytes they belong to never cross: they ride on the same packet.
//! * [`AsyncFdSocket::recv`] is cancel-safe and has no lost wake-ups: readiness is handled by
//!   tokio's `AsyncFd::async_io`, which retries after `WouldBlock` clears stale readiness.
//! * An [`AsyncFdSocket`] is registered with tokio for readability only, so a sender is not
//!   woken each time its peer takes a message off the queue (the kernel reports room to
//!   write on every one); a send that finds the queue full waits on a duplicate descriptor
//!   registered for writability until it completes.
//!
//! # Wire format
//!
//! A message is one packet of up to [`MAX_CHUNK`] payload bytes, or a first packet followed by
//! continuation packets; each packet starts with a small header (tag `0xFD`, kind, and in the
//! first packet the descriptor count and payload length). Descriptors travel on the first
//! packet only. `SOCK_STREAM` is deliberately not offered for descriptor traffic: on a stream
//! the kernel merges bytes across `sendmsg` boundaries, so descriptors can drift away from the
//! bytes they belong to.
//!
//! # Example
//!
//! ```
//! use std::os::fd::AsFd;
//! let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
//! let (parent, child) = fdpass::FdSocket::pair()?;
//! parent.send(b"http", &[listener.as_fd()])?;
//!
//! let mut message = child.recv()?.expect("parent still open");
//! let fd = message.fds.pop().expect("one descriptor");
//! let shared: std::net::TcpListener = fdpass::into_socket(fd)?;
//! assert_eq!(shared.local_addr()?, listener.local_addr()?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

// The workspace's `unsafe` lives here: registering an `OwnedFd` with tokio's reactor, the
// post-fork hook that lets a child inherit a chosen descriptor, adopting it in the child, and
// the two socket options rustix does not wrap (reuseport BPF, TCP_INFO).
#![deny(unsafe_code)]

mod async_socket;
mod by_cpu;
mod convert;
mod error;
mod exec;
mod frame;
mod inherit;
mod listener;
mod peer;
mod quic;
mod raw;
mod reuseport;
mod signals;
mod socket;
mod sticky;
#[cfg(test)]
mod test_support;

pub use crate::{
    async_socket::{AsyncFdSocket, register},
    by_cpu::{MAX_PER_CPU, steer_reuseport_by_cpu},
    convert::{FromSocketFd, SocketKind, into_socket, into_socket_vouched},
    error::{Error, SocketKindError},
    exec::{Credentials, join_cgroup, pin_to_cpus, run_as},
    frame::{DEFAULT_MAX_MESSAGE_LEN, Limits, MAX_CHUNK, MAX_FDS, Message},
    inherit::{adopt_inherited_fd, inherit_fd, inherit_fds_at, kill_with_parent},
    listener::{RawAcceptor, SeqpacketListener},
    peer::{PeerCredentials, peer_credentials},
    quic::{MAX_QUIC_MEMBERS, QUIC_CID_PREFIX_LEN, quic_cid_member, quic_cid_prefix, steer_quic},
    raw::{RawPacket, recv_raw, send_raw},
    reuseport::{
        ListenQueue, MAX_STEERED, RoundRobinSteering, listen_queue, steer_reuseport,
        unsteer_reuseport,
    },
    signals::{SignalCount, count_signal},
    socket::FdSocket,
    sticky::{MAX_STICKY, rendezvous_weight, steer_reuseport_by_source},
};

pub use std::os::fd::OwnedFd;
