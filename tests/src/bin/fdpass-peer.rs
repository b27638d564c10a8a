//! Helper process for the `fdpass_*` tests: the other end of an inherited `FdSocket`.
//!
//! `fdpass-peer <mode>` with the socket's descriptor number in `FDPASS_FD`:
//! * `accept`: receive one listening TCP socket, accept one client, greet it, exit.
//! * `echo`: send every message back with the same descriptors until end of file, then send
//!   one last message holding this process's open descriptor count.
//! * `list-fds`: print this process's open descriptor numbers, one a line.
//! * `async-send-idle N`: on a single-threaded tokio runtime, send `N` one-byte messages with an
//!   `AsyncFdSocket`, then wait for a message; answer it with how many times this thread was
//!   put to sleep and woken (voluntary context switches) while it waited, then exit.

use std::io::Write;
use std::os::fd::AsFd;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// How many times this thread gave up the CPU to wait (it is the runtime's only thread).
fn voluntary_switches() -> u64 {
    std::fs::read_to_string("/proc/thread-self/status")
        .expect("procfs")
        .lines()
        .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("voluntary_ctxt_switches")
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
        Some("async-send-idle") => {
            let n: u8 = std::env::args()
                .nth(2)
                .and_then(|n| n.parse().ok())
                .expect("a count");
            let fd = socket_from_env();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let socket = fdpass::AsyncFdSocket::from_fd(fd.into()).expect("adopt");
                for i in 0..n {
                    socket.send(&[i], &[]).await.expect("send");
                }
                let before = voluntary_switches();
                socket.recv().await.expect("recv").expect("a message");
                let woken = voluntary_switches() - before;
                socket
                    .send(woken.to_string().as_bytes(), &[])
                    .await
                    .expect("send");
            });
        }
        other => {
            eprintln!("fdpass-peer: unknown mode {other:?}");
            std::process::exit(2);
        }
    }
}
