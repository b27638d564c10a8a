//! `fdpass` and `passfd` speak the same SCM_RIGHTS wire format: each receives what the other
//! sends. (`passfd` is a dev-dependency only; see the README for why it is not used.)

mod support;

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use fdpass::FdSocket;
use passfd::FdPassingExt;
use support::link_of;

#[test]
fn passfd_sends_and_fdpass_receives() {
    let (a, b) = FdSocket::pair().unwrap();
    let (r, _w) = rustix::pipe::pipe().unwrap();
    a.as_raw_fd()
        .send_fd_with_payload(r.as_raw_fd(), &7u32.to_ne_bytes())
        .unwrap();
    let mut buf = [0u8; 16];
    let packet = fdpass::recv_raw(&b, &mut buf, 1).unwrap();
    assert_eq!(&buf[..packet.len], &7u32.to_ne_bytes());
    assert_eq!(packet.fds.len(), 1);
    assert_eq!(link_of(&packet.fds[0]), link_of(&r));
}

#[test]
fn fdpass_sends_and_passfd_receives() {
    let (a, b) = FdSocket::pair().unwrap();
    let (r, _w) = rustix::pipe::pipe().unwrap();
    fdpass::send_raw(&a, &[0u8; 4], &[r.as_fd()]).unwrap();
    let raw = b.as_raw_fd().recv_fd().unwrap();
    // SAFETY: passfd hands us a freshly received descriptor that nothing else owns.
    #[allow(unsafe_code)]
    let received = unsafe { OwnedFd::from_raw_fd(raw) };
    assert_eq!(link_of(&received), link_of(&r));
}
