//! Worker program for the `watcher_*` and `cli_*` tests: one behaviour per mode.
//!
//! `test-worker <mode> [params]`:
//! * `serve ADDR[,ADDR2]`: answer each connection with `worker <id> pid <pid> gen <generation>`
//!   and close it; on termination finish the connections in flight, then exit 0. With two
//!   addresses it listens and serves on both.
//! * `serve-until-gen ADDR N`: like `serve`, but generation N and later exit 1 at once.
//! * `serve-slow-requests ADDR MS`: like `serve`, each answer taking MS milliseconds.
//! * `serve-slow-stop ADDR MS`: like `serve`, but take MS milliseconds to stop.
//! * `crash-after MS CODE`: report ready, exit with CODE after MS milliseconds.
//! * `exit-before-ready CODE`, `never-ready`, `panic-after MS`.
//! * `block-after MS`: report ready, then block the runtime (heartbeats stop).
//! * `request-shutdown`: report ready, then ask the watcher to stop it.
//! * `hostile ENDPOINT`: without the worker library, send every kind of bad input on one of
//!   the inherited sockets (`control`, `log` or `listen`), then exit 9.
//! * `chat N`: report ready; answer each watcher message `ping X` with `pong X`; on stop send
//!   N messages `last X` and log N events `log X`, then exit 0.
//! * `recv-loop`: report ready, loop on the message channel until it ends, exit 0.
//! * `two-layers`: make two `ForwardingLayer`s, log through the second, report ready.
//! * `flood-shutdown N`, `flood-messages BYTES`, `log-huge BYTES`: floods of stop requests,
//!   messages, one huge log line.
//! * `kill-self-from-gen N ADDR`: generations from N SIGKILL themselves at once; earlier
//!   ones serve. `fork-grandchild ADDR`: fork a `sleep`, then serve.
//! * `serve-address-file PATH`: serve on the address written in PATH.
//! * `serve-unless-file PATH ADDR`: like `serve`, but while PATH exists never report ready.
//! * `grow MIB ADDR`: serve while growing by MIB MiB a second.
//! * `daemonize-grandchildren ADDR`: leave two `setsid -f sleep` daemons behind, then serve.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("hostile") {
        // (The hostile mode takes the raw sockets itself, so the library must not.)
        cluster_worker::init_tracing();
    }
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let num = |i: usize| arg(i).parse::<u64>().unwrap_or(0);
    match arg(0).as_str() {
        "serve" => serve(&arg(1), Duration::ZERO, Duration::ZERO).await,
        "serve-slow-requests" => {
            serve(&arg(1), Duration::ZERO, Duration::from_millis(num(2))).await
        }
        "serve-until-gen" => {
            // Generations from N on fail to start: a broken deploy.
            if u64::from(cluster_worker::generation().unwrap_or(1)) >= num(2) {
                std::process::exit(1);
            }
            serve(&arg(1), Duration::ZERO, Duration::ZERO).await
        }
        "serve-after" => {
            // A slow start (a stuck import, a cache warm-up) before it even links.
            std::thread::sleep(Duration::from_millis(num(1)));
            serve(&arg(2), Duration::ZERO, Duration::ZERO).await
        }
        "slow-if-file" => {
            // Hangs before it even links while FILE exists (a slow start of a later deploy).
            while std::path::Path::new(&arg(1)).exists() {
                std::thread::sleep(Duration::from_millis(100));
            }
            serve(&arg(2), Duration::ZERO, Duration::ZERO).await
        }
        "serve-slow-stop" => serve(&arg(1), Duration::from_millis(num(2)), Duration::ZERO).await,
        "crash-after" => {
            cluster_worker::ready().await.unwrap();
            tokio::time::sleep(Duration::from_millis(num(1))).await;
            std::process::exit(num(2) as i32);
        }
        "exit-before-ready" => std::process::exit(num(1) as i32),
        "serve-unless-file" => {
            if std::path::Path::new(&arg(1)).exists() {
                cluster_worker::defer_ready();
                cluster_worker::await_termination().await;
            } else {
                serve(&arg(2), Duration::ZERO, Duration::ZERO).await
            }
        }
        "never-ready" => {
            // Connect (heartbeats flow) but never report ready.
            cluster_worker::defer_ready();
            cluster_worker::await_termination().await;
        }
        "panic-after" => {
            cluster_worker::ready().await.unwrap();
            tokio::time::sleep(Duration::from_millis(num(1))).await;
            panic!("boom from the test worker");
        }
        "block-after" => {
            cluster_worker::ready().await.unwrap();
            tokio::time::sleep(Duration::from_millis(num(1))).await;
            std::thread::sleep(Duration::from_secs(3600));
        }
        "request-shutdown" => {
            cluster_worker::ready().await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            cluster_worker::shutdown().await.unwrap();
            let why = cluster_worker::await_termination().await;
            tracing::info!(?why, "stopping on request");
        }
        "chat" => chat(num(1)).await,
        "recv-loop" => {
            // Loops on the channel only: it must end when the watcher asks for a stop.
            let channel = cluster_worker::channel::<String, String>().expect("a worker");
            cluster_worker::ready().await.unwrap();
            while let Ok(Some(_)) = channel.recv().await {}
            tracing::info!("recv returned None: stopping");
        }
        "two-layers" => {
            use tracing_subscriber::layer::SubscriberExt;
            let first = cluster_worker::ForwardingLayer::new();
            let second = cluster_worker::ForwardingLayer::new();
            assert!(first.is_some() && second.is_some(), "a layer each time");
            let subscriber = tracing_subscriber::registry().with(second.unwrap());
            tracing::subscriber::with_default(subscriber, || {
                tracing::info!("logged through the second layer");
            });
            cluster_worker::ready().await.unwrap();
            cluster_worker::await_termination().await;
        }
        "flood-shutdown" => {
            cluster_worker::ready().await.unwrap();
            for _ in 0..num(1) {
                if cluster_worker::shutdown().await.is_err() {
                    break;
                }
            }
            cluster_worker::await_termination().await;
        }
        "flood-messages" => {
            // Messages of N bytes as fast as the watcher takes them, until stopped.
            let channel = cluster_worker::channel::<Vec<u8>, String>().expect("a worker");
            cluster_worker::ready().await.unwrap();
            let payload = vec![7u8; num(1) as usize];
            tokio::select! {
                _ = async { loop { if channel.send(&payload).await.is_err() { break } } } => {}
                _ = cluster_worker::await_termination() => {}
            }
        }
        "log-huge" => {
            tracing::info!("{}", "y".repeat(num(1) as usize));
            tracing::info!("after the huge line\nforged line");
            cluster_worker::ready().await.unwrap();
            cluster_worker::await_termination().await;
        }
        "kill-self-from-gen" => {
            // Generations from N on are SIGKILLed at once (what the OOM killer does to a
            // start-up allocation); earlier ones serve on ADDR.
            if u64::from(cluster_worker::generation().unwrap_or(1)) >= num(1) {
                let me = rustix::process::getpid();
                let _ = rustix::process::kill_process(me, rustix::process::Signal::KILL);
            }
            serve(&arg(2), Duration::ZERO, Duration::ZERO).await
        }
        "fork-grandchild" => {
            // Leaves a child of its own behind in its process group, then serves. Never
            // waited for, on purpose: the watcher must clean it up.
            #[allow(clippy::zombie_processes)]
            let _child = std::process::Command::new("sleep")
                .arg("300")
                .spawn()
                .unwrap();
            serve(&arg(1), Duration::ZERO, Duration::ZERO).await
        }
        "daemonize-grandchildren" => {
            // `setsid -f` leaves two daemons outside this worker's process group, orphaned to
            // the cluster: one that ends at once (a zombie unless reaped) and one that runs on.
            for time in ["0.1", "299.5"] {
                let _ = std::process::Command::new("setsid")
                    .args(["-f", "sleep", time])
                    .status();
            }
            serve(&arg(1), Duration::ZERO, Duration::ZERO).await
        }
        "grow" => {
            // Grows by N MiB a second (touched, so resident) while serving: a leak.
            let per_second = num(1) as usize;
            tokio::spawn(async move {
                let mut leak: Vec<Vec<u8>> = Vec::new();
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    leak.push(vec![1u8; per_second * 1024 * 1024 / 10]);
                }
            });
            serve(&arg(2), Duration::ZERO, Duration::ZERO).await
        }
        "serve-address-file" => {
            // The address to listen on is read at start: a deploy may move the port.
            let address = std::fs::read_to_string(arg(1)).unwrap();
            serve(address.trim(), Duration::ZERO, Duration::ZERO).await
        }
        "hostile" => hostile(&arg(1)),
        other => {
            eprintln!("test-worker: unknown mode {other:?}");
            std::process::exit(2);
        }
    }
}

async fn serve(addresses: &str, stop_delay: Duration, request_delay: Duration) {
    let (address, second) = match addresses.split_once(',') {
        Some((first, second)) => (first, Some(second)),
        None => (addresses, None),
    };
    let listener = cluster_worker::listen(address).await.expect("listen");
    tracing::info!("listening on {}", listener.local_addr());
    let second = match second {
        Some(address) => Some(cluster_worker::listen(address).await.expect("listen")),
        None => None,
    };
    let accept_second = async || match &second {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    };
    let me = format!(
        "worker {} pid {} gen {}",
        cluster_worker::id().unwrap_or(0),
        cluster_worker::pid(),
        cluster_worker::generation().unwrap_or(0)
    );
    let mut connections = tokio::task::JoinSet::new();
    let why = loop {
        tokio::select! {
            accepted = async { tokio::select! {
                accepted = listener.accept() => accepted,
                accepted = accept_second() => accepted,
            } } => {
                let Ok((mut stream, _)) = accepted else { continue };
                let me = me.clone();
                connections.spawn(async move {
                    // Read the request (anything up to a blank line), then answer.
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    tokio::time::sleep(request_delay).await;
                    let response = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{me}", me.len());
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
            why = cluster_worker::await_termination() => break why,
        }
    };
    tracing::info!(?why, "stopping");
    drop((listener, second));
    tokio::time::sleep(stop_delay).await;
    while connections.join_next().await.is_some() {}
}

async fn chat(last: u64) {
    let channel = cluster_worker::channel::<String, String>().expect("a worker");
    cluster_worker::ready().await.unwrap();
    channel
        .send(&format!("hello from {}", cluster_worker::id().unwrap()))
        .await
        .unwrap();
    loop {
        tokio::select! {
            message = channel.recv() => match message.unwrap() {
                Some(text) => {
                    if let Some(x) = text.strip_prefix("ping ") {
                        channel.send(&format!("pong {x} from {}", cluster_worker::id().unwrap())).await.unwrap();
                    }
                }
                // The stream ends once the watcher asked this worker to stop.
                None => break,
            },
            _ = cluster_worker::await_termination() => break,
        }
    }
    for x in 0..last {
        channel.send(&format!("last {x}")).await.unwrap();
        tracing::info!(x, "log {x}");
    }
}

/// A misbehaving worker: garbage, an oversize length, a frame of the wrong type, 253
/// descriptors, and half a frame then silence, on the named socket.
fn hostile(endpoint: &str) {
    let fds: Vec<i32> = std::env::var("CLUSTER_WORKER_FDS")
        .expect("run by a watcher")
        .split(',')
        .map(|n| n.parse().unwrap())
        .collect();
    let index = match endpoint {
        "control" => 0,
        "log" => 1,
        _ => 2,
    };
    let socket =
        fdpass::FdSocket::from_fd(fdpass::adopt_inherited_fd(fds[index]).unwrap()).unwrap();
    let (pipe, _w) = rustix::pipe::pipe().unwrap();
    let many: Vec<_> = (0..253).map(|_| std::os::fd::AsFd::as_fd(&pipe)).collect();
    let attempts: [(&[u8], &[std::os::fd::BorrowedFd<'_>]); 5] = [
        (b"garbage that is not a frame", &[]),
        (&[0xFD, 1, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF], &[]),
        (&[0xFD, 1, 0, 0, 3, 0, 0, 0, 0xFF, 0xFF, 0xFF], &[]),
        (&[0xFD, 1, 253, 0, 0, 0, 0, 0], &many),
        (&[0xFD, 1, 0, 0, 0, 0, 1, 0], &[]),
    ];
    for (bytes, fds) in attempts {
        // The watcher may close the socket after the first offence; keep trying regardless.
        let _ = fdpass::send_raw(&socket, bytes, fds);
    }
    std::thread::sleep(Duration::from_millis(300));
    std::process::exit(9);
}
