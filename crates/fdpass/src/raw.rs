//! The only place that calls `sendmsg`/`recvmsg`. Everything else goes through here, so the
//! guarantees (atomic close-on-exec, no `SIGPIPE`, nothing leaked on truncation) hold
//! everywhere.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};

use crate::{Error, MAX_FDS};

/// Control-buffer bytes that hold `fds` descriptors.
pub(crate) const fn cmsg_space(fds: usize) -> usize {
    rustix::cmsg_space!(ScmRights(fds))
}

const SEND_SPACE: usize = cmsg_space(MAX_FDS);

/// One `sendmsg` of `iov` with `fds` attached, never raising `SIGPIPE`.
pub(crate) fn send_packet(
    socket: BorrowedFd<'_>,
    iov: &[IoSlice<'_>],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    let mut space = [MaybeUninit::<u8>::uninit(); SEND_SPACE];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors",
        ));
    }
    loop {
        match sendmsg(socket, iov, &mut control, SendFlags::NOSIGNAL) {
            Err(rustix::io::Errno::INTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

/// A packet taken off the socket: its length in the caller's buffer and its descriptors.
pub(crate) type Packet = (usize, Vec<OwnedFd>);

/// One `recvmsg` with `MSG_CMSG_CLOEXEC`. The outer `io::Result` carries socket errors
/// (including `WouldBlock`, which the async glue needs to see); the inner one carries protocol
/// violations, for which every descriptor that arrived is already closed.
pub(crate) fn recv_packet(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    cmsg: &mut [MaybeUninit<u8>],
) -> io::Result<Result<Packet, Error>> {
    let mut control = RecvAncillaryBuffer::new(cmsg);
    let msg = loop {
        match recvmsg(
            socket,
            &mut [IoSliceMut::new(buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other?,
        }
    };
    // Take ownership of every descriptor first: whatever goes wrong below, they are closed
    // when `fds` drops.
    let mut fds = Vec::new();
    let mut unexpected = None;
    for message in control.drain() {
        match message {
            RecvAncillaryMessage::ScmRights(received) => fds.extend(received),
            RecvAncillaryMessage::ScmCredentials(_) => unexpected = Some("SCM_CREDENTIALS"),
            _ => unexpected = Some("unknown"),
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        return Ok(Err(Error::ControlTruncated));
    }
    if msg.flags.contains(ReturnFlags::TRUNC) {
        return Ok(Err(Error::PacketTruncated { max: buf.len() }));
    }
    if let Some(kind) = unexpected {
        return Ok(Err(Error::UnexpectedControlMessage { kind }));
    }
    Ok(Ok((msg.bytes, fds)))
}

/// What [`recv_raw`] received: `len` bytes at the start of the caller's buffer, and the
/// descriptors that came with them (close-on-exec).
#[derive(Debug)]
pub struct RawPacket {
    /// Bytes written to the start of the buffer.
    pub len: usize,
    /// Descriptors attached to those bytes.
    pub fds: Vec<OwnedFd>,
}

/// Sends `data` and `fds` in one `sendmsg`, with no framing of this crate's: the form other
/// implementations (`passfd`, `sendfd`, C programs) speak.
///
/// Prefer [`FdSocket`](crate::FdSocket) between two programs that both use this crate.
///
/// # Errors
/// [`Error::TooManyFds`] past [`MAX_FDS`]; [`Error::Io`] when the socket call fails.
pub fn send_raw(socket: impl AsFd, data: &[u8], fds: &[BorrowedFd<'_>]) -> Result<usize, Error> {
    if fds.len() > MAX_FDS {
        return Err(Error::TooManyFds {
            count: fds.len(),
            max: MAX_FDS,
        });
    }
    Ok(send_packet(socket.as_fd(), &[IoSlice::new(data)], fds)?)
}

/// Receives one `recvmsg` worth of bytes into `buf` and at most `max_fds` descriptors, each
/// close-on-exec from the moment it exists.
///
/// A length of 0 with no descriptors means the peer closed the socket.
///
/// # Errors
/// [`Error::ControlTruncated`] when the peer sent more than `max_fds` descriptors,
/// [`Error::PacketTruncated`] when a datagram or packet did not fit `buf`,
/// [`Error::UnexpectedControlMessage`] for anything but `SCM_RIGHTS`; in each case every
/// descriptor that arrived has been closed.
pub fn recv_raw(socket: impl AsFd, buf: &mut [u8], max_fds: usize) -> Result<RawPacket, Error> {
    let mut cmsg = vec![MaybeUninit::<u8>::uninit(); cmsg_space(max_fds.min(MAX_FDS))];
    let (len, fds) = recv_packet(socket.as_fd(), buf, &mut cmsg)??;
    // The control buffer is rounded up for alignment and may hold a few more than asked.
    if fds.len() > max_fds {
        return Err(Error::TooManyFds {
            count: fds.len(),
            max: max_fds,
        });
    }
    Ok(RawPacket { len, fds })
}
