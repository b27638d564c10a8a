//! `fdpass` between real processes: a listening socket handed to a child that serves on it,
//! 100,000 round trips with no descriptor leaked on either side, and close-on-exec.

mod support;

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::Duration;

use fdpass::FdSocket;
use support::{link_of, refs_to, workspace_bin};

fn peer(mode: &str) -> (FdSocket, std::process::Child) {
    peer_with_args(&[mode])
}

fn peer_with_args(args: &[&str]) -> (FdSocket, std::process::Child) {
    let (ours, theirs) = FdSocket::pair().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_fdpass-peer"));
    let number = fdpass::inherit_fd(&mut command, theirs.into());
    command.args(args).env("FDPASS_FD", number.to_string());
    let child = command.spawn().unwrap();
    drop(command); // closes our copy of the child's end, so EOF is seen when the child exits
    (ours, child)
}

#[test]
fn a_listening_socket_sent_to_another_process_accepts_there() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (socket, mut child) = peer("accept");
    socket.send(b"listener", &[listener.as_fd()]).unwrap();
    let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut greeting = String::new();
    client.read_to_string(&mut greeting).unwrap();
    assert_eq!(greeting, format!("hello from {}", child.id()));
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_hundred_thousand_round_trips_leak_no_descriptor_on_either_side() {
    let (socket, mut child) = peer("echo");
    socket
        .set_recv_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (payload_fd, _) = rustix::pipe::pipe().unwrap();
    let target = link_of(&payload_fd);
    for i in 0u32..100_000 {
        socket
            .send(&i.to_le_bytes(), &[payload_fd.as_fd()])
            .unwrap();
        let echo = socket.recv().unwrap().expect("peer alive");
        assert_eq!(echo.data, i.to_le_bytes());
        assert_eq!(echo.fds.len(), 1);
        assert_eq!(link_of(&echo.fds[0]), target);
    }
    assert_eq!(refs_to(&target), 1, "only our own descriptor remains");
    rustix::net::shutdown(&socket, rustix::net::Shutdown::Write).unwrap();
    let report = socket.recv().unwrap().expect("final report");
    let report = String::from_utf8(report.data).unwrap();
    let (before, after) = report.split_once(' ').unwrap();
    assert_eq!(before, after, "peer's descriptor count before and after");
    assert!(child.wait().unwrap().success());
}

fn child_fds(inherit: Option<OwnedFd>) -> Vec<i32> {
    let mut command = Command::new(workspace_bin("fdpass-peer"));
    if let Some(fd) = inherit {
        fdpass::inherit_fd(&mut command, fd);
    }
    let out = command
        .arg("list-fds")
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

#[test]
fn received_descriptors_are_close_on_exec_and_inherited_ones_are_not() {
    let (a, b) = FdSocket::pair().unwrap();
    let (r, _w) = rustix::pipe::pipe().unwrap();
    a.send(b"", &[r.as_fd()]).unwrap();
    let received = b.recv().unwrap().unwrap().fds.pop().unwrap();
    let flags = rustix::io::fcntl_getfd(&received).unwrap();
    assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
    let number = received.as_raw_fd();
    assert!(
        !child_fds(None).contains(&number),
        "a child must not inherit fd {number}"
    );

    // The same descriptor handed over on purpose does reach the child.
    assert!(child_fds(Some(received)).contains(&number));
}

/// A hand-off pipe's sender (the watcher in round-robin mode) must not be woken each time its
/// peer takes a message off the queue: on a busy pipe that was a wake-up per connection.
#[test]
fn an_idle_async_sender_is_not_woken_by_its_peer_reading() {
    const QUEUED: u8 = 8; // far fewer than the socket buffers hold
    let (socket, mut child) = peer_with_args(&["async-send-idle", &QUEUED.to_string()]);
    socket
        .set_recv_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // Wait until everything is queued, then read it slowly, one message per 20 ms.
    let first = socket.recv().unwrap().expect("a message");
    assert_eq!(first.data, [0]);
    for i in 1..QUEUED {
        std::thread::sleep(Duration::from_millis(20));
        let message = socket.recv().unwrap().expect("a message");
        assert_eq!(message.data, [i]);
    }
    std::thread::sleep(Duration::from_millis(20));
    socket.send(b"report", &[]).unwrap();
    let report = socket.recv().unwrap().expect("the report");
    let woken: u64 = String::from_utf8(report.data).unwrap().parse().unwrap();
    assert!(child.wait().unwrap().success());
    // Waking for the report itself takes one or two; one per message read would be 8 or more.
    assert!(
        woken <= 3,
        "the sender was woken {woken} times while its peer read {QUEUED} messages"
    );
}
