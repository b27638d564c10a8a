//! Balancing under a mixed load: most requests answer at once, 5 % keep their worker busy
//! for 50 ms (`/busy?ms=50`, hello-http and Node alike). A blind balancer (round-robin,
//! Node's `SCHED_RR`) keeps handing 1/N of the new connections to a worker that is busy, and
//! the quick requests behind it wait; least-conn sees the busy worker's open connection and
//! sends them elsewhere. Reported: the p99 latency of the quick requests (the slow ones take
//! 50 ms whatever the balancer does), of all requests, and the throughput.
//!
//! The load is open-loop at a fixed rate that keeps the workers busy with slow requests 20 %
//! of the time (80 requests a second per worker: 4 slow ones of 50 ms), well below
//! saturation. Near saturation every worker is often busy at once (at 40 % with 2 workers,
//! 16 % of the time), and a balancer that commits each connection to one worker when it
//! arrives (round-robin, least-conn, Node) cannot beat the shared socket, where whichever
//! worker frees up first takes the next connection.
//!
//! `target/release/mixed-bench`; knobs `BENCH_WORKERS` (default `2 4`), `BENCH_DURATION`
//! seconds per run (default 5), `BENCH_ROUNDS` (default 3), `BENCH_CLIENTS` (client threads,
//! each a new connection per request; default 32), `BENCH_RATE` (requests a second per
//! worker; default 80). Only 127.0.0.1; each server runs in a
//! process group of its own and only those groups are signalled.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cluster_bench::{ServerProcess, env_or, free_port, print_ratio};

/// One request in twenty is slow.
const SLOW_EVERY: u64 = 20;
const SLOW_PATH: &str = "/busy?ms=50";

struct Config {
    name: String,
    workers: usize,
    command: Vec<String>,
    env: Vec<(String, String)>,
}

/// Latencies of one run, in microseconds.
#[derive(Default)]
struct Run {
    quick: Vec<u64>,
    slow: Vec<u64>,
    failed: u64,
    seconds: f64,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index] as f64 / 1000.0
}

/// `clients` threads, each sending one request per new connection on a fixed schedule,
/// `rate` requests a second in all, for `seconds`. A latency counts from the time the request
/// was due, so a client held up by a slow answer does not hide the wait of the next ones.
fn load(port: u16, clients: usize, rate: u64, seconds: u64) -> Run {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let interval = Duration::from_secs_f64(clients as f64 / rate.max(1) as f64);
    let threads: Vec<_> = (0..clients)
        .map(|client| {
            std::thread::spawn(move || {
                let mut run = Run::default();
                let mut n = client as u64;
                // Spread the clients' schedules over one interval.
                let mut due = started + interval.mul_f64(client as f64 / clients as f64);
                while due < deadline {
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    n += 1;
                    let slow = n.is_multiple_of(SLOW_EVERY);
                    let path = if slow { SLOW_PATH } else { "/" };
                    let begun = due;
                    due += interval;
                    match request(port, path) {
                        Ok(()) => {
                            let micros = begun.elapsed().as_micros() as u64;
                            if slow {
                                run.slow.push(micros);
                            } else {
                                run.quick.push(micros);
                            }
                        }
                        Err(_) => run.failed += 1,
                    }
                }
                run
            })
        })
        .collect();
    let mut total = Run::default();
    for thread in threads {
        let run = thread.join().expect("client thread");
        total.quick.extend(run.quick);
        total.slow.extend(run.slow);
        total.failed += run.failed;
    }
    total.seconds = started.elapsed().as_secs_f64();
    total.quick.sort_unstable();
    total.slow.sort_unstable();
    total
}

fn request(port: u16, path: &str) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_nodelay(true)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n"
    )?;
    let mut response = Vec::with_capacity(256);
    stream.read_to_end(&mut response)?;
    if response.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(std::io::Error::other("not a 200"))
    }
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned();
    let release = root.join("target/release");
    let hello = release
        .join("examples/hello-http")
        .to_string_lossy()
        .into_owned();
    let cluster = release.join("cluster").to_string_lossy().into_owned();
    let node = root
        .join("bench/node/cluster.js")
        .to_string_lossy()
        .into_owned();
    let workers: Vec<usize> = std::env::var("BENCH_WORKERS")
        .unwrap_or_else(|_| "2 4".into())
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let seconds = env_or("BENCH_DURATION", 5);
    let rounds = env_or("BENCH_ROUNDS", 3) as usize;
    let clients = env_or("BENCH_CLIENTS", 32) as usize;
    let rate_per_worker = env_or("BENCH_RATE", 80);

    let mut configs = Vec::new();
    for &n in &workers {
        let w = n.to_string();
        for balance in ["round-robin", "least-conn", "shared", "reuseport"] {
            configs.push(Config {
                name: format!("cluster {balance}, {n}w"),
                workers: n,
                command: [
                    cluster.as_str(),
                    "-w",
                    &w,
                    "--balance",
                    balance,
                    "-l",
                    "warn",
                    &hello,
                    "127.0.0.1:{port}",
                ]
                .map(String::from)
                .to_vec(),
                env: vec![],
            });
        }
        configs.push(Config {
            name: format!("node cluster SCHED_RR, {n}w"),
            workers: n,
            command: vec!["node".into(), node.clone(), "{port}".into()],
            env: vec![
                ("WORKERS".into(), w.clone()),
                ("NODE_CLUSTER_SCHED_POLICY".into(), "rr".into()),
            ],
        });
    }

    // (config) -> per round: quick p99, all p99, req/s, failed.
    let mut results: BTreeMap<usize, Vec<(f64, f64, f64, u64)>> = BTreeMap::new();
    for round in 0..rounds {
        for (i, config) in configs.iter().enumerate() {
            let port = free_port();
            let server = ServerProcess::command(&config.command, &config.env, port);
            server.wait_ready(port);
            let run = load(
                port,
                clients,
                rate_per_worker * config.workers as u64,
                seconds,
            );
            let mut all: Vec<u64> = run.quick.iter().chain(&run.slow).copied().collect();
            all.sort_unstable();
            let rate = all.len() as f64 / run.seconds;
            eprintln!(
                "  quick p50 {:.2} p90 {:.2} p95 {:.2} p99 {:.2} ms, {} quick, {} slow",
                percentile(&run.quick, 0.5),
                percentile(&run.quick, 0.9),
                percentile(&run.quick, 0.95),
                percentile(&run.quick, 0.99),
                run.quick.len(),
                run.slow.len()
            );
            results.entry(i).or_default().push((
                percentile(&run.quick, 0.99),
                percentile(&all, 0.99),
                rate,
                run.failed,
            ));
            drop(server);
            eprintln!("round {}/{rounds}: {} done", round + 1, config.name);
        }
    }

    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "\n## Mixed load ({rate_per_worker} requests a second per worker from {clients} clients, \
         a new connection per request, 1 in {SLOW_EVERY} requests `{SLOW_PATH}`; {seconds} s \
         per run, {rounds} rounds interleaved; medians)\n"
    );
    println!("| configuration | quick p99 ms (per round) | all p99 ms | req/s | failed |");
    println!("|---|---:|---:|---:|---:|");
    let mut quick_p99 = BTreeMap::new();
    for (i, config) in configs.iter().enumerate() {
        let rows = &results[&i];
        let quick: Vec<f64> = rows.iter().map(|r| r.0).collect();
        let per_round: Vec<String> = quick.iter().map(|q| format!("{q:.1}")).collect();
        let q = median(quick.clone());
        quick_p99.insert(
            (
                config.name.split(',').next().unwrap_or("").to_owned(),
                config.workers,
            ),
            q,
        );
        println!(
            "| {} | {q:.2} ({}) | {:.2} | {:.0} | {} |",
            config.name,
            per_round.join(", "),
            median(rows.iter().map(|r| r.1).collect()),
            median(rows.iter().map(|r| r.2).collect()),
            rows.iter().map(|r| r.3).sum::<u64>(),
        );
    }
    println!("\n## Ratios against the targets\n");
    for &n in &workers {
        let get = |name: &str| quick_p99[&(name.to_owned(), n)];
        let least = get("cluster least-conn");
        let ratio = least / get("cluster round-robin");
        print_ratio(
            &format!("{n} workers, quick p99 least-conn / round-robin"),
            ratio,
            "<= 0.5x",
            ratio <= 0.5,
        );
        let ratio = least / get("node cluster SCHED_RR");
        print_ratio(
            &format!("{n} workers, quick p99 least-conn / node SCHED_RR"),
            ratio,
            "< 1.0x",
            ratio < 1.0,
        );
    }
}
