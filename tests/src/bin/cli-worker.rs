//! Worker program for the `cli_*` tests of the `cluster` binary: one behaviour per mode.
//!
//! `cli-worker <mode> [params]`:
//! * `serve ADDR [PORT_FILE]`: answer each HTTP request with `worker <id> pid <pid>` and close
//!   the connection; on termination finish the connections in flight, then exit 0. With
//!   PORT_FILE, write the port listened on there once listening (for tests that do not read
//!   the cluster's output).
//! * `chatty ADDR PORT_FILE LINES`: like `serve`, and log LINES lines every millisecond
//!   (forwarded to the cluster, which must keep serving whether or not its output is read).
//! * `slow-ready MS ADDR`: like `serve`, but report ready only MS milliseconds after listening
//!   (a worker that warms up).
//! * `ready-up-to N ADDR`: slots 1 to N serve as with `serve`; higher slots (added later)
//!   connect but never report ready, and exit when told to stop.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    cluster_worker::init_tracing();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    match arg(0).as_str() {
        "serve" => serve(&arg(1), args.get(2).map(String::as_str)).await,
        "slow-ready" => {
            let warm_up = Duration::from_millis(arg(1).parse().unwrap_or(0));
            cluster_worker::defer_ready();
            tokio::spawn(async move {
                tokio::time::sleep(warm_up).await;
                let _ = cluster_worker::ready().await;
            });
            serve(&arg(2), None).await;
        }
        "chatty" => {
            let lines = arg(3).parse::<u64>().unwrap_or(1);
            tokio::spawn(chatter(lines));
            serve(&arg(1), Some(&arg(2))).await;
        }
        "ready-up-to" => {
            let last_ready = arg(1).parse::<u32>().unwrap_or(1);
            if cluster_worker::id().unwrap_or(1) > last_ready {
                // Connected (heartbeats flow) but never ready: a worker stuck warming up.
                cluster_worker::defer_ready();
                let why = cluster_worker::await_termination().await;
                tracing::info!(?why, "stopping before ever being ready");
                return;
            }
            serve(&arg(2), None).await;
        }
        other => {
            eprintln!("cli-worker: unknown mode {other:?}");
            std::process::exit(2);
        }
    }
}

/// Logs `lines` lines every millisecond, for ever.
async fn chatter(lines: u64) {
    let mut ticks = tokio::time::interval(Duration::from_millis(1));
    let mut count = 0u64;
    loop {
        ticks.tick().await;
        for _ in 0..lines {
            count += 1;
            tracing::info!(count, "chatter chatter chatter chatter chatter chatter");
        }
    }
}

async fn serve(address: &str, port_file: Option<&str>) {
    let listener = cluster_worker::listen(address).await.expect("listen");
    let port = listener.local_addr().port();
    tracing::info!("listening on {}", listener.local_addr());
    if let Some(path) = port_file {
        // Written whole under another name, then renamed: a reader never sees half of it.
        let partial = format!("{path}.{}", std::process::id());
        std::fs::write(&partial, port.to_string()).expect("write the port file");
        std::fs::rename(&partial, path).expect("rename the port file");
    }
    let me = format!(
        "worker {} pid {}",
        cluster_worker::id().unwrap_or(0),
        cluster_worker::pid()
    );
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
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
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{me}",
                        me.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
            why = cluster_worker::await_termination() => {
                tracing::info!(?why, "stopping");
                break;
            }
        }
        // Reap answered connections as we go.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}
