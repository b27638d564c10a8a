//! Helper process for the `fdpass_*` tests: the other end of an inherited `FdSocket`.
//!
//! `fdpass-peer <mode>` with the socket's descriptor number in `FDPASS_FD`:
//! * `accept`: receive one listening TCP socket, accept one client, greet it, exit.
//! * `echo`: send every message back with the same descriptors until end of file, then send
//!   one last message holding this process's open descriptor count.
//! * `list-fds`: print this process's open descriptor numbers, one a line.

use std::io::Write;
use std::os::fd::AsFd;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn socket_from_env() -> fdpass::FdSocket {
    let number: i32 = std::env::var("FDPASS_FD")
        .expect("FDPASS_FD")
        .parse()
        .expect("number");
    let fd = fdpass::adopt_inherited_fd(number).expect("an inherited descriptor");
    fdpass::FdSocket::from_fd(fd).expect("a seqpacket socket")
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("accept") => {
            let socket = socket_from_env();
            let mut message = socket.recv().expect("recv").expect("a message");
            let listener: std::net::TcpListener =
                fdpass::into_socket(message.fds.pop().expect("one fd")).expect("a listener");
            let (mut client, _) = listener.accept().expect("accept");
            write!(client, "hello from {}", std::process::id()).expect("write");
        }
        Some("echo") => {
            let socket = socket_from_env();
            let before = open_fds();
            while let Some(message) = socket.recv().expect("recv") {
                let fds: Vec<_> = message.fds.iter().map(|fd| fd.as_fd()).collect();
                socket.send(&message.data, &fds).expect("send");
            }
            let report = format!("{before} {}", open_fds());
            // The peer may already be gone if it stopped reading; that is its choice.
            let _ = socket.send(report.as_bytes(), &[]);
        }
        Some("list-fds") => {
            for entry in std::fs::read_dir("/proc/self/fd")
                .expect("procfs")
                .flatten()
            {
                println!("{}", entry.file_name().to_string_lossy());
            }
        }
        other => {
            eprintln!("fdpass-peer: unknown mode {other:?}");
            std::process::exit(2);
        }
    }
}
