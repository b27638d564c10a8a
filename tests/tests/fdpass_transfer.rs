//! `fdpass` over real socket pairs in one process: payloads, many descriptors, and every bad
//! input a peer can send, each checked for leaks through /proc/self/fd.

mod support;

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use fdpass::{Error, FdSocket, Limits, MAX_CHUNK, MAX_FDS};
use support::{link_of, refs_to};

fn pipe() -> (OwnedFd, OwnedFd) {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe")
}

/// A descriptor nothing else in the process refers to, so `refs_to` counts it exactly.
fn unique_fd() -> OwnedFd {
    pipe().0
}

#[test]
fn payload_and_descriptor_arrive_together_and_work() {
    let (a, b) = FdSocket::pair().unwrap();
    let (reader, writer) = pipe();
    a.send(b"take this", &[writer.as_fd()]).unwrap();
    let mut message = b.recv().unwrap().unwrap();
    assert_eq!(message.data, b"take this");
    assert_eq!(message.fds.len(), 1);
    let mut received = std::fs::File::from(message.fds.pop().unwrap());
    drop(writer);
    received.write_all(b"through the received fd").unwrap();
    drop(received);
    let mut out = String::new();
    std::fs::File::from(reader)
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out, "through the received fd");
}

#[test]
fn many_descriptors_in_one_message_keep_their_order() {
    let (a, b) = FdSocket::pair().unwrap();
    let pipes: Vec<_> = (0..MAX_FDS).map(|_| pipe()).collect();
    let fds: Vec<BorrowedFd<'_>> = pipes.iter().map(|(r, _)| r.as_fd()).collect();
    a.send(b"253", &fds).unwrap();
    let message = b.recv().unwrap().unwrap();
    assert_eq!(message.fds.len(), MAX_FDS);
    for ((r, _), got) in pipes.iter().zip(&message.fds) {
        assert_eq!(link_of(r), link_of(got));
    }
}

#[test]
fn more_than_the_kernel_maximum_is_refused_before_sending() {
    let (a, b) = FdSocket::pair().unwrap();
    let pipes: Vec<_> = (0..=MAX_FDS).map(|_| pipe()).collect();
    let fds: Vec<BorrowedFd<'_>> = pipes.iter().map(|(r, _)| r.as_fd()).collect();
    let err = a.send(b"", &fds).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooManyFds {
                count: 254,
                max: 253
            }
        ),
        "{err:?}"
    );
    drop(a);
    assert!(b.recv().unwrap().is_none(), "nothing was sent");
}

#[test]
fn consecutive_messages_never_cross() {
    let (a, b) = FdSocket::pair().unwrap();
    let pipes: Vec<_> = (0..20).map(|_| pipe()).collect();
    for (i, (r, w)) in pipes.iter().enumerate() {
        let fds = match i % 3 {
            0 => vec![],
            1 => vec![r.as_fd()],
            _ => vec![r.as_fd(), w.as_fd()],
        };
        a.send(format!("message {i}").as_bytes(), &fds).unwrap();
    }
    for (i, (r, w)) in pipes.iter().enumerate() {
        let message = b.recv().unwrap().unwrap();
        assert_eq!(message.data, format!("message {i}").as_bytes());
        let links: Vec<_> = message.fds.iter().map(link_of).collect();
        let expected = match i % 3 {
            0 => vec![],
            1 => vec![link_of(r)],
            _ => vec![link_of(r), link_of(w)],
        };
        assert_eq!(links, expected);
    }
}

#[test]
fn large_messages_are_split_and_reassembled_with_their_fds() {
    let (a, b) = FdSocket::pair().unwrap();
    let data: Vec<u8> = (0..(3 * MAX_CHUNK + 123))
        .map(|i| (i % 251) as u8)
        .collect();
    let (r, _w) = pipe();
    let sender = std::thread::spawn(move || {
        a.send(&data, &[r.as_fd()]).unwrap();
        a.send(b"after", &[]).unwrap();
        (data, link_of(&r))
    });
    let big = b.recv().unwrap().unwrap();
    let small = b.recv().unwrap().unwrap();
    let (data, link) = sender.join().unwrap();
    assert_eq!(big.data, data);
    assert_eq!(big.fds.iter().map(link_of).collect::<Vec<_>>(), vec![link]);
    assert_eq!(small.data, b"after");
}

#[test]
fn a_message_over_the_receivers_limit_is_rejected_without_reading_it_all() {
    let (a, b) = FdSocket::pair().unwrap();
    let b = b.with_limits(Limits::default().max_message_len(1000));
    a.send(&[1u8; 1001], &[]).unwrap();
    let err = b.recv().unwrap_err();
    assert!(
        matches!(
            err,
            Error::MessageTooLarge {
                len: 1001,
                max: 1000
            }
        ),
        "{err:?}"
    );
}

/// Sends a raw packet, bypassing the framing, as a buggy or hostile peer would.
fn raw(socket: &FdSocket, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
    fdpass::send_raw(socket, bytes, fds).unwrap();
}

#[test]
fn more_descriptors_than_declared_is_an_error_and_nothing_leaks() {
    let (a, b) = FdSocket::pair().unwrap();
    let r = unique_fd();
    let target = link_of(&r);
    // Header declares one descriptor; two arrive.
    raw(
        &a,
        &[0xFD, 1, 1, 0, 2, 0, 0, 0, b'h', b'i'],
        &[r.as_fd(), r.as_fd()],
    );
    let err = b.recv().unwrap_err();
    assert!(
        matches!(
            err,
            Error::FdCountMismatch {
                declared: 1,
                received: 2
            }
        ),
        "{err:?}"
    );
    assert_eq!(refs_to(&target), 1, "only our own copy remains open");
}

#[test]
fn fewer_descriptors_than_declared_is_an_error_and_nothing_leaks() {
    let (a, b) = FdSocket::pair().unwrap();
    let r = unique_fd();
    let target = link_of(&r);
    raw(&a, &[0xFD, 1, 3, 0, 0, 0, 0, 0], &[r.as_fd()]);
    let err = b.recv().unwrap_err();
    assert!(
        matches!(
            err,
            Error::FdCountMismatch {
                declared: 3,
                received: 1
            }
        ),
        "{err:?}"
    );
    assert_eq!(refs_to(&target), 1);
}

#[test]
fn truncated_control_data_is_an_error_and_nothing_leaks() {
    let (a, b) = FdSocket::pair().unwrap();
    let b = b.with_limits(Limits::default().max_fds(2));
    let r = unique_fd();
    let target = link_of(&r);
    let many = vec![r.as_fd(); 64];
    raw(&a, &[0xFD, 1, 64, 0, 0, 0, 0, 0], &many);
    let err = b.recv().unwrap_err();
    assert!(matches!(err, Error::ControlTruncated), "{err:?}");
    assert_eq!(refs_to(&target), 1);
    // The socket is still usable for the next, well-formed message.
    a.send(b"next", &[]).unwrap();
    assert_eq!(b.recv().unwrap().unwrap().data, b"next");
}

#[test]
fn raw_receive_rejects_more_descriptors_than_asked_for() {
    let (a, b) = FdSocket::pair().unwrap();
    let r = unique_fd();
    let target = link_of(&r);
    raw(&a, b"x", &[r.as_fd(), r.as_fd(), r.as_fd()]);
    let mut buf = [0u8; 16];
    let err = fdpass::recv_raw(&b, &mut buf, 1).unwrap_err();
    assert!(
        matches!(err, Error::TooManyFds { .. } | Error::ControlTruncated),
        "{err:?}"
    );
    assert_eq!(refs_to(&target), 1);
}

#[test]
fn oversized_packet_is_truncation_not_a_partial_message() {
    let (a, b) = FdSocket::pair().unwrap();
    let r = unique_fd();
    let target = link_of(&r);
    let mut huge = vec![0xFD, 1, 1, 0];
    huge.extend_from_slice(&((MAX_CHUNK as u32) + 100).to_le_bytes());
    huge.resize(8 + MAX_CHUNK + 100, 7);
    raw(&a, &huge, &[r.as_fd()]);
    let err = b.recv().unwrap_err();
    assert!(matches!(err, Error::PacketTruncated { .. }), "{err:?}");
    assert_eq!(refs_to(&target), 1);
}

#[test]
fn garbage_is_a_typed_error_with_descriptors_closed() {
    let (a, b) = FdSocket::pair().unwrap();
    let r = unique_fd();
    let target = link_of(&r);
    raw(&a, b"GET / HTTP/1.1\r\n", &[r.as_fd()]);
    let err = b.recv().unwrap_err();
    assert!(matches!(err, Error::Malformed { .. }), "{err:?}");
    assert_eq!(refs_to(&target), 1);
}

#[test]
fn credentials_instead_of_descriptors_are_rejected() {
    let (a, b) = FdSocket::pair().unwrap();
    // With SO_PASSCRED every packet carries SCM_CREDENTIALS: a control message that is not
    // SCM_RIGHTS.
    rustix::net::sockopt::set_socket_passcred(&b, true).unwrap();
    let r = unique_fd();
    let target = link_of(&r);
    a.send(b"hi", &[r.as_fd()]).unwrap();
    let err = b.recv().unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnexpectedControlMessage {
                kind: "SCM_CREDENTIALS"
            }
        ),
        "{err:?}"
    );
    assert_eq!(refs_to(&target), 1);
}

#[test]
fn peer_closing_mid_message_is_an_error_and_its_fds_are_closed() {
    let (a, b) = FdSocket::pair().unwrap();
    let r = unique_fd();
    let target = link_of(&r);
    let mut first = vec![0xFD, 1, 1, 0];
    first.extend_from_slice(&((MAX_CHUNK as u32) * 2).to_le_bytes());
    first.resize(8 + MAX_CHUNK, 0);
    raw(&a, &first, &[r.as_fd()]);
    drop(a);
    let err = b.recv().unwrap_err();
    assert!(
        matches!(err, Error::ClosedMidMessage { received: MAX_CHUNK, expected } if expected == 2 * MAX_CHUNK),
        "{err:?}"
    );
    assert_eq!(refs_to(&target), 1);
}

#[test]
fn clean_end_of_file_is_none_and_a_send_to_a_closed_peer_is_epipe() {
    let (a, b) = FdSocket::pair().unwrap();
    drop(b);
    // No SIGPIPE: the test process would die here otherwise.
    let err = a.send(b"anyone?", &[]).unwrap_err();
    let Error::Io(io) = err else {
        panic!("{err:?}")
    };
    assert_eq!(
        io.raw_os_error(),
        Some(rustix::io::Errno::PIPE.raw_os_error())
    );
    let (a, b) = FdSocket::pair().unwrap();
    drop(a);
    assert!(b.recv().unwrap().is_none());
}

#[test]
fn receive_timeout_is_bounded_and_keeps_the_socket_usable() {
    let (a, b) = FdSocket::pair().unwrap();
    b.set_recv_timeout(Some(std::time::Duration::from_millis(50)))
        .unwrap();
    let started = std::time::Instant::now();
    let err = b.recv().unwrap_err();
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let Error::Io(io) = err else {
        panic!("{err:?}")
    };
    assert_eq!(io.kind(), std::io::ErrorKind::WouldBlock);
    a.send(b"late", &[]).unwrap();
    assert_eq!(b.recv().unwrap().unwrap().data, b"late");
}

#[test]
fn descriptors_are_checked_before_becoming_typed_sockets() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (unix_a, _unix_b) = std::os::unix::net::UnixStream::pair().unwrap();
    let (r, _w) = pipe();

    let (a, b) = FdSocket::pair().unwrap();
    a.send(
        b"",
        &[listener.as_fd(), udp.as_fd(), unix_a.as_fd(), r.as_fd()],
    )
    .unwrap();
    let mut fds = b.recv().unwrap().unwrap().fds.into_iter();
    let (l, u, s, p) = (
        fds.next().unwrap(),
        fds.next().unwrap(),
        fds.next().unwrap(),
        fds.next().unwrap(),
    );

    let l_link = link_of(&l);
    let err = fdpass::into_socket::<std::net::TcpStream>(l).unwrap_err();
    assert!(err.to_string().contains("listening"), "{err}");
    assert_eq!(refs_to(&l_link), 1, "the mismatched descriptor was closed");

    let u: std::net::UdpSocket = fdpass::into_socket(u).unwrap();
    assert_eq!(u.local_addr().unwrap(), udp.local_addr().unwrap());
    assert!(fdpass::into_socket::<std::os::unix::net::UnixListener>(s).is_err());
    assert!(matches!(
        fdpass::into_socket::<std::net::TcpListener>(p),
        Err(fdpass::SocketKindError::Io(_))
    ));
}
