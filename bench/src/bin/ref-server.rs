//! Reference servers for the HTTP benchmark: the same hyper handler as `hello-http`, with no
//! cluster code at all.
//!
//! * `ref-server tokio ADDR`: one multi-threaded tokio process (reference a).
//! * `ref-server shared N ADDR`: a parent binds, then N single-threaded children accept on the
//!   inherited socket (reference b, the bar of `shared` mode).
//! * `ref-server fdpass N ADDR`: a parent accepts in a loop and sends each client socket round
//!   robin to N single-threaded children over SOCK_SEQPACKET pairs (reference c, the bar of
//!   `round-robin` mode).
//! * `ref-server fdpass-poll N ADDR`, `ref-server fdpass-tokio N ADDR`: the same parent
//!   waiting as an event loop must (`poll`, or a one-thread tokio runtime), to tell what
//!   reference (c) gains by blocking in `accept` from what the cluster code costs.
//! * `ref-server h2 ADDR`: the hello handler over plain hyper HTTP/2 (h2c), one thread, as a
//!   `hello-http` worker runs.
//! * `ref-server ws ADDR`: a plain tokio-tungstenite echo, on tokio's default runtime as the
//!   `long-lived` example runs.
//! * `ref-server axum-ws ADDR`: the same echo through axum's `WebSocketUpgrade` and
//!   `axum::serve`.

use std::net::TcpListener;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command};

use cluster_bench::serve_hello;

const CHILD: &str = "REF_SERVER_CHILD_FD";

fn main() {
    if let Ok(spec) = std::env::var(CHILD) {
        let (kind, fd) = spec.split_once(':').expect("kind:fd");
        let fd = fdpass::adopt_inherited_fd(fd.parse().expect("fd")).expect("inherited fd");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(child(kind, fd));
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("tokio") => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let listener = tokio::net::TcpListener::bind(&args[1]).await.unwrap();
                println!("listening on {}", listener.local_addr().unwrap());
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    stream.set_nodelay(true).unwrap();
                    tokio::spawn(serve_hello(stream, "tokio"));
                }
            });
        }
        Some("h2") => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(accept_loop(&args[1], |stream| {
                tokio::spawn(cluster_bench::serve_hello_h2(stream, "h2"));
            }));
        }
        Some("ws") => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(accept_loop(&args[1], |stream| {
                tokio::spawn(cluster_bench::serve_ws_echo(stream));
            }));
        }
        Some("axum-ws") => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let listener = tokio::net::TcpListener::bind(&args[1]).await.unwrap();
                println!("listening on {}", listener.local_addr().unwrap());
                axum::serve(listener, cluster_bench::axum_ws_echo())
                    .await
                    .unwrap();
            });
        }
        Some("shared") => {
            let n: usize = args[1].parse().unwrap();
            let listener = TcpListener::bind(&args[2]).unwrap();
            println!("listening on {}", listener.local_addr().unwrap());
            let children: Vec<Child> = (0..n)
                .map(|_| spawn_child("shared", listener.try_clone().unwrap().into()))
                .collect();
            wait_all(children);
        }
        Some(kind @ ("fdpass" | "fdpass-poll" | "fdpass-tokio")) => {
            let n: usize = args[1].parse().unwrap();
            let listener = TcpListener::bind(&args[2]).unwrap();
            println!("listening on {}", listener.local_addr().unwrap());
            let mut pipes = Vec::new();
            let mut children = Vec::new();
            for _ in 0..n {
                let (ours, theirs) = fdpass::FdSocket::pair().unwrap();
                children.push(spawn_child("fdpass", theirs.into()));
                pipes.push(ours);
            }
            match kind {
                "fdpass" => pass_blocking(&listener, &pipes),
                "fdpass-poll" => pass_polling(&listener, &pipes),
                _ => pass_from_tokio(listener, pipes),
            }
            wait_all(children);
        }
        _ => {
            eprintln!(
                "usage: ref-server tokio|h2|ws|axum-ws ADDR | shared|fdpass|fdpass-poll|fdpass-tokio N ADDR"
            );
            std::process::exit(2);
        }
    }
}

/// Reference (c): blocks in `accept`, blocks in `send` on a full child.
fn pass_blocking(listener: &TcpListener, pipes: &[fdpass::FdSocket]) {
    let mut next = 0;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let _ = pipes[next].send(b"", &[stream.as_fd()]);
        next = (next + 1) % pipes.len();
    }
}

/// Reference (c) waiting as an event loop does: a non-blocking `accept` until `EAGAIN`, then
/// `poll`. It costs what a blocking `accept` does not: the failed `accept` and the `poll` of
/// every wake-up.
fn pass_polling(listener: &TcpListener, pipes: &[fdpass::FdSocket]) {
    use rustix::event::{PollFd, PollFlags};
    listener.set_nonblocking(true).unwrap();
    let mut next = 0;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = pipes[next].send(b"", &[stream.as_fd()]);
                next = (next + 1) % pipes.len();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let _ = rustix::event::poll(&mut [PollFd::new(listener, PollFlags::IN)], None);
            }
            Err(_) => {}
        }
    }
}

/// Reference (c) as a one-thread tokio loop with nothing else to do: what the watcher's
/// accept path would cost with no cluster code in it.
fn pass_from_tokio(listener: TcpListener, pipes: Vec<fdpass::FdSocket>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let pipes: Vec<fdpass::AsyncFdSocket> = pipes
            .into_iter()
            .map(|p| fdpass::AsyncFdSocket::from_fd(p.into()).unwrap())
            .collect();
        let acceptor = fdpass::RawAcceptor::new(listener.into()).unwrap();
        let mut next = 0;
        loop {
            let Ok((stream, _)) = acceptor.accept().await else {
                continue;
            };
            if pipes[next].try_send(b"", &[stream.as_fd()]).is_err() {
                let _ = pipes[next].send(b"", &[stream.as_fd()]).await;
            }
            next = (next + 1) % pipes.len();
        }
    });
}

fn spawn_child(kind: &str, fd: OwnedFd) -> Child {
    let mut command = Command::new(std::env::current_exe().unwrap());
    let number = fdpass::inherit_fd(&mut command, fd);
    command
        .env(CHILD, format!("{kind}:{number}"))
        .spawn()
        .unwrap()
}

fn wait_all(children: Vec<Child>) {
    for mut child in children {
        let _ = child.wait();
    }
}

async fn child(kind: &str, fd: OwnedFd) {
    match kind {
        "shared" => {
            let listener: tokio::net::TcpListener = fdpass::into_socket(fd).unwrap();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                stream.set_nodelay(true).unwrap();
                tokio::spawn(serve_hello(stream, "shared"));
            }
        }
        _ => {
            let socket = fdpass::AsyncFdSocket::from_fd(fd).unwrap();
            while let Ok(Some(mut message)) = socket.recv().await {
                let Some(fd) = message.fds.pop() else {
                    continue;
                };
                let stream: tokio::net::TcpStream = fdpass::into_socket(fd).unwrap();
                stream.set_nodelay(true).unwrap();
                tokio::spawn(serve_hello(stream, "fdpass"));
            }
        }
    }
}

/// Binds `address`, says so, and hands every connection to `serve`.
async fn accept_loop(address: &str, serve: impl Fn(tokio::net::TcpStream)) {
    let listener = tokio::net::TcpListener::bind(address).await.unwrap();
    println!("listening on {}", listener.local_addr().unwrap());
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        stream.set_nodelay(true).unwrap();
        serve(stream);
    }
}
