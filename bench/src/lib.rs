//! Shared helpers for the benchmarks: repeated, interleaved measurements reduced to medians,
//! printed as a table with ratios against a reference measured in the same run.
//!
//! Absolute figures on a shared machine swing twofold, so every target is a ratio between
//! configurations that were measured alternately, round after round.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One GET on a new connection; whether it answered 200.
pub fn http_ok(port: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET / HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

/// A server process in a process group of its own, stopped (group-wide) on drop.
#[derive(Debug)]
pub struct Server {
    /// The process.
    pub child: Child,
}

impl Server {
    /// Starts `command` (with `{port}` replaced) in a new process group.
    pub fn start(command: &[String], env: &[(String, String)], port: u16, stdout: Stdio) -> Self {
        let args: Vec<String> = command
            .iter()
            .map(|a| a.replace("{port}", &port.to_string()))
            .collect();
        let child = Command::new(&args[0])
            .args(&args[1..])
            .envs(env.iter().cloned())
            .stdout(stdout)
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", args[0]));
        Self { child }
    }

    /// Waits until the server answers (at most 20 s); returns how long that took.
    pub fn wait_ready(&self, port: u16) -> Duration {
        let started = Instant::now();
        while !http_ok(port) {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "server on {port} never answered"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        started.elapsed()
    }

    /// The process (and group) id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let group = rustix::process::Pid::from_raw(self.pid()).unwrap();
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Resident memory of a process, in KiB (0 if gone).
pub fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .map(|v| v.trim().trim_end_matches(" kB").parse().unwrap_or(0))
            })
        })
        .unwrap_or(0)
}

/// Pids whose parent is `parent`.
pub fn children_of(parent: i32) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        if after
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<i32>().ok())
            == Some(parent)
        {
            pids.push(pid);
        }
    }
    pids
}
