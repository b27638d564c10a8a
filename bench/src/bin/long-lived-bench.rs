//! Long-lived connections, one worker, against plain servers measured in the same run
//! (issue 25): HTTP/2 through `serve_http` (`hello-http` under `cluster -w 1`) against a
//! plain hyper HTTP/2 server with the same handler and runtime (`ref-server h2`), both under
//! `h2load -c16 -m10`; WebSocket echo messages per second through `serve_axum` and
//! `ws::Draining` (`long-lived` under `cluster -w 1`) against a plain tokio-tungstenite echo
//! (`ref-server ws`), and against `axum::serve` with the same echo (`ref-server axum-ws`),
//! which tells axum's own cost from the loop's. Rounds alternate; medians and ratios are
//! printed.
//!
//! ```sh
//! cargo build --release -p cluster-cli -p cluster-examples -p cluster-bench --bins --examples
//! BENCH_ROUNDS=5 BENCH_DURATION=5 target/release/long-lived-bench
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cluster_bench::{Samples, ServerProcess, env_or, free_port, print_ratio, print_table};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned();
    let bin = |p: &str| {
        root.join("target/release")
            .join(p)
            .to_string_lossy()
            .into_owned()
    };
    let rounds = env_or("BENCH_ROUNDS", 3) as usize;
    let seconds = env_or("BENCH_DURATION", 5);
    let cluster = |example: &str| {
        vec![
            bin("cluster"),
            "-w".into(),
            "1".into(),
            "-l".into(),
            "warn".into(),
            bin(&format!("examples/{example}")),
            "127.0.0.1:{port}".into(),
        ]
    };
    let reference = |mode: &str| vec![bin("ref-server"), mode.into(), "127.0.0.1:{port}".into()];

    let h2 = [
        (
            "serve_http HTTP/2 (cluster -w 1 hello-http)",
            cluster("hello-http"),
        ),
        ("plain hyper HTTP/2 (ref-server h2)", reference("h2")),
    ];
    let ws = [
        (
            "serve_axum + ws::Draining (cluster -w 1 long-lived)",
            cluster("long-lived"),
        ),
        ("plain tokio-tungstenite (ref-server ws)", reference("ws")),
        (
            "axum::serve, same echo (ref-server axum-ws)",
            reference("axum-ws"),
        ),
    ];
    let mut h2_samples: Vec<Samples> = h2.iter().map(|(n, _)| named(n)).collect();
    let mut ws_samples: Vec<Samples> = ws.iter().map(|(n, _)| named(n)).collect();
    for _ in 0..rounds {
        for ((_, command), samples) in h2.iter().zip(&mut h2_samples) {
            let port = free_port();
            let _server = started(command, port);
            samples.rates.push(h2load(port, seconds));
        }
        for ((_, command), samples) in ws.iter().zip(&mut ws_samples) {
            let port = free_port();
            let _server = started(command, port);
            samples
                .rates
                .push(ws_echo(port, 16, Duration::from_secs(seconds)));
        }
    }
    print_table("HTTP/2, one worker, h2load -c16 -m10", "req/s", &h2_samples);
    print_table(
        "WebSocket echo, one worker, 16 connections",
        "messages/s",
        &ws_samples,
    );
    println!();
    let h2_ratio = h2_samples[0].median() / h2_samples[1].median();
    print_ratio(
        "HTTP/2: serve_http / plain hyper",
        h2_ratio,
        ">= 0.95",
        h2_ratio >= 0.95,
    );
    let ws_ratio = ws_samples[0].median() / ws_samples[1].median();
    print_ratio(
        "WebSocket echo: serve_axum / plain tokio-tungstenite",
        ws_ratio,
        ">= 0.95",
        ws_ratio >= 0.95,
    );
}

fn named(name: &str) -> Samples {
    Samples {
        name: name.to_owned(),
        rates: Vec::new(),
    }
}

/// Starts a server and waits until its port takes connections, and a moment more.
fn started(command: &[String], port: u16) -> ServerProcess {
    let server = ServerProcess::command(command, &[], port);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{command:?} never listened");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(500));
    server
}

/// `h2load -c16 -m10 -t1 -D seconds`: requests per second.
fn h2load(port: u16, seconds: u64) -> f64 {
    let output = std::process::Command::new("h2load")
        .args(["-c16", "-m10", "-t1", "-D", &seconds.to_string()])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("h2load (apt-get install nghttp2-client)");
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|r| r.strip_suffix(" req/s").or_else(|| r.split(' ').next()))
        .and_then(|r| r.trim().parse().ok())
        .unwrap_or_else(|| panic!("no rate in h2load's output:\n{text}"))
}

/// `connections` WebSocket clients on one thread, each sending a message and awaiting its
/// echo in a loop for `duration`: echoes per second.
fn ws_echo(port: u16, connections: usize, duration: Duration) -> f64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let url = format!("ws://127.0.0.1:{port}/ws");
        let started = Instant::now();
        let tasks: Vec<_> = (0..connections)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move {
                    let (mut socket, _) = tokio_tungstenite::connect_async(&url)
                        .await
                        .expect("connect");
                    let mut echoed = 0u64;
                    let payload = Message::text("x".repeat(64));
                    while started.elapsed() < duration {
                        socket.send(payload.clone()).await.expect("send");
                        match socket.next().await {
                            Some(Ok(Message::Text(_))) => echoed += 1,
                            other => panic!("no echo: {other:?}"),
                        }
                    }
                    let _ = socket.close(None).await;
                    echoed
                })
            })
            .collect();
        let mut total = 0;
        for task in tasks {
            total += task.await.expect("client task");
        }
        total as f64 / started.elapsed().as_secs_f64()
    })
}
