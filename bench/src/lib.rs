//! Shared helpers for the benchmarks: repeated, interleaved measurements reduced to medians,
//! printed as a table with ratios against a reference measured in the same run.
//!
//! Absolute figures on a shared machine swing twofold, so every target is a ratio between
//! configurations that were measured alternately, round after round.

use std::time::Instant;

/// Rates (operations per second) of one configuration, one per round.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    /// The configuration's name, as printed.
    pub name: String,
    /// One rate per round.
    pub rates: Vec<f64>,
}

impl Samples {
    /// The median rate.
    pub fn median(&self) -> f64 {
        let mut sorted = self.rates.clone();
        sorted.sort_by(f64::total_cmp);
        match sorted.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        }
    }

    /// The lowest and highest rate.
    pub fn range(&self) -> (f64, f64) {
        let min = self.rates.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.rates.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (min, max)
    }
}

/// Runs every configuration once per round, `rounds` times, interleaved, and returns the rates.
/// Each closure performs `ops` operations and the rate is `ops / elapsed`.
pub fn interleaved(
    rounds: usize,
    ops: u64,
    configs: &mut [(&str, &mut dyn FnMut())],
) -> Vec<Samples> {
    let mut samples: Vec<Samples> = configs
        .iter()
        .map(|(name, _)| Samples {
            name: (*name).to_owned(),
            rates: vec![],
        })
        .collect();
    for _ in 0..rounds {
        for ((_, run), s) in configs.iter_mut().zip(&mut samples) {
            let started = Instant::now();
            run();
            s.rates.push(ops as f64 / started.elapsed().as_secs_f64());
        }
    }
    samples
}

/// A numeric knob from the environment, or its default.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Prints a table of medians and min–max ranges.
pub fn print_table(title: &str, unit: &str, samples: &[Samples]) {
    println!("\n## {title}\n");
    println!("| configuration | median {unit} | min–max |");
    println!("|---|---:|---:|");
    for s in samples {
        let (min, max) = s.range();
        println!("| {} | {:.0} | {:.0}–{:.0} |", s.name, s.median(), min, max);
    }
}

/// Prints one target line: `ratio = a / b`, the bound and whether it holds.
pub fn print_ratio(label: &str, ratio: f64, bound: &str, holds: bool) {
    let verdict = if holds { "met" } else { "MISSED" };
    println!("- {label}: {ratio:.2}x (target {bound}): {verdict}");
}

/// The benchmark's HTTP handler, the same as `hello-http`'s: `Hello, World!` with an
/// `x-cluster-worker` header, HTTP/1.1 with keep-alive.
pub async fn serve_hello(stream: tokio::net::TcpStream, worker: &'static str) {
    use http_body_util::Full;
    use hyper::body::{Bytes, Incoming};
    let service = hyper::service::service_fn(move |_: hyper::Request<Incoming>| async move {
        let mut response = hyper::Response::new(Full::new(Bytes::from_static(b"Hello, World!")));
        response.headers_mut().insert(
            "x-cluster-worker",
            hyper::header::HeaderValue::from_static(worker),
        );
        Ok::<_, std::convert::Infallible>(response)
    });
    let io = hyper_util::rt::TokioIo::new(stream);
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await;
}

/// `hello-http`'s handler exactly (both its headers) over HTTP/2 (h2c with prior
/// knowledge): the plain hyper HTTP/2 server the long-lived benchmark holds `serve_http` to.
pub async fn serve_hello_h2(stream: tokio::net::TcpStream, worker: &'static str) {
    use http_body_util::Full;
    use hyper::body::{Bytes, Incoming};
    let pid = hyper::header::HeaderValue::from(std::process::id());
    let service = hyper::service::service_fn(move |_: hyper::Request<Incoming>| {
        let mut response = hyper::Response::new(Full::new(Bytes::from_static(b"Hello, World!")));
        let headers = response.headers_mut();
        headers.insert(
            "x-cluster-worker",
            hyper::header::HeaderValue::from_static(worker),
        );
        headers.insert("x-cluster-pid", pid.clone());
        async move { Ok::<_, std::convert::Infallible>(response) }
    });
    let io = hyper_util::rt::TokioIo::new(stream);
    let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .serve_connection(io, service)
        .await;
}

/// A plain tokio-tungstenite echo of every text and binary message: the reference of the
/// WebSocket benchmark.
pub async fn serve_ws_echo(stream: tokio::net::TcpStream) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    while let Some(Ok(message)) = socket.next().await {
        if matches!(message, Message::Text(_) | Message::Binary(_))
            && socket.send(message).await.is_err()
        {
            return;
        }
    }
}

/// An axum router with the same echo on `/ws` through axum's own `WebSocketUpgrade`, for
/// `axum::serve`: the reference that tells axum's cost from the serve loop's.
pub fn axum_ws_echo() -> axum::Router {
    use axum::extract::ws::{Message, WebSocketUpgrade};
    async fn echo(upgrade: WebSocketUpgrade) -> axum::response::Response {
        upgrade.on_upgrade(|mut socket| async move {
            while let Some(Ok(message)) = socket.recv().await {
                if matches!(message, Message::Text(_) | Message::Binary(_))
                    && socket.send(message).await.is_err()
                {
                    return;
                }
            }
        })
    }
    axum::Router::new().route("/ws", axum::routing::get(echo))
}

pub use cluster_testkit::{
    ServerProcess, children_of, context_switches, cpu_ticks, fd_count, free_port, http_ok,
    process_exists, rss_kib, signal,
};

/// What one `wrk` run measured.
#[derive(Debug, Clone, Copy)]
pub struct WrkRun {
    /// Requests completed.
    pub requests: u64,
    /// Requests per second.
    pub rate: f64,
    /// 99th percentile latency, in milliseconds.
    pub p99_ms: f64,
}

/// Runs `wrk -t1 -c64` against 127.0.0.1:`port` for `seconds`, with a new connection per
/// request when `close`.
///
/// # Panics
/// When wrk is not installed (`bench/run.sh` installs it).
pub fn wrk(port: u16, seconds: u64, close: bool) -> WrkRun {
    let mut command = std::process::Command::new("wrk");
    command.args(["-t1", "-c64", &format!("-d{seconds}s"), "--latency"]);
    if close {
        command.args(["-H", "Connection: close"]);
    }
    let out = command
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("wrk (run bench/run.sh, which installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let rate = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    let requests = text
        .lines()
        .find_map(|l| {
            l.split_once(" requests in")
                .map(|(n, _)| n.trim().to_owned())
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let p99_ms = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| parse_latency(v.trim()))
        .unwrap_or(f64::NAN);
    WrkRun {
        requests,
        rate,
        p99_ms,
    }
}

/// `12.34ms`, `567.00us`, `1.20s` in milliseconds.
fn parse_latency(text: &str) -> f64 {
    let (number, unit) = text.split_at(
        text.find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(text.len()),
    );
    let value: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => value / 1000.0,
        "s" => value * 1000.0,
        _ => value,
    }
}
