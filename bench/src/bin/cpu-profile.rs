//! CPU time and context switches per request of each process of a server during a wrk run:
//! a diagnostic of where a configuration spends its time (the round-robin parent against
//! reference (c), say), not a benchmark.
//!
//! Reads utime/stime (clock ticks, so coarse) and the voluntary and involuntary context
//! switches from /proc of the server's first process and of its children, before and after
//! `wrk -t1 -c64` with a new connection per request (`PROFILE_LOAD=keep-alive`: plain
//! keep-alive) against 127.0.0.1, and prints them per request. Configurations run
//! interleaved, round after round.
//!
//! ```sh
//! target/release/cpu-profile [ROUNDS] [CONFIG...]   # after bench/run.sh built everything
//! # CONFIG: rr, lc, hash, ref_c, shared, ref_b, ref_c_poll, ref_c_tokio (default: rr ref_c);
//! # PROFILE_SECS=4 per run. ref_c_poll and ref_c_tokio: reference (c)'s parent waiting as
//! # an event loop does, to separate the wait's cost from the cluster code's.
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use cluster_bench::{Samples, ServerProcess, children_of, context_switches, free_port, wrk};

fn command(name: &str) -> Option<Vec<String>> {
    let release = cluster_testkit::workspace_bin("cluster")
        .parent()
        .map(std::path::Path::to_path_buf)?;
    let bin = |p: &str| release.join(p).to_string_lossy().into_owned();
    let cluster = |balance: &str| {
        vec![
            bin("cluster"),
            "-w".into(),
            "2".into(),
            "--balance".into(),
            balance.into(),
            "-l".into(),
            "warn".into(),
            bin("examples/hello-http"),
            "127.0.0.1:{port}".into(),
        ]
    };
    let reference = |kind: &str| {
        vec![
            bin("ref-server"),
            kind.into(),
            "2".into(),
            "127.0.0.1:{port}".into(),
        ]
    };
    Some(match name {
        "rr" => cluster("round-robin"),
        "lc" => cluster("least-conn"),
        "hash" => cluster("hash=ip"),
        "shared" => cluster("shared"),
        "ref_c" => reference("fdpass"),
        "ref_b" => reference("shared"),
        "ref_c_poll" => reference("fdpass-poll"),
        "ref_c_tokio" => reference("fdpass-tokio"),
        _ => return None,
    })
}

/// One run: the request rate, and per process (parent first) user µs, system µs,
/// voluntary and involuntary switches per request.
fn run(name: &str, seconds: u64, close: bool) -> (f64, Vec<[f64; 4]>) {
    let port = free_port();
    let server = ServerProcess::command(&command(name).expect("a known config"), &[], port);
    server.wait_ready(port);
    std::thread::sleep(Duration::from_millis(300));
    let mut pids = vec![server.pid()];
    pids.extend(children_of(server.pid()));
    let before: Vec<_> = pids.iter().map(|p| context_switches(*p)).collect();
    let result = wrk(port, seconds, close);
    let after: Vec<_> = pids.iter().map(|p| context_switches(*p)).collect();
    drop(server);
    let ticks_to_us = 1e6 / rustix::param::clock_ticks_per_second() as f64;
    let requests = result.requests.max(1) as f64;
    let per = before
        .iter()
        .zip(&after)
        .map(|(b, a)| {
            [
                (a.0 - b.0) as f64 * ticks_to_us / requests,
                (a.1 - b.1) as f64 * ticks_to_us / requests,
                (a.2 - b.2) as f64 / requests,
                (a.3 - b.3) as f64 / requests,
            ]
        })
        .collect();
    (result.rate, per)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(3);
    let mut chosen: Vec<String> = args.collect();
    if chosen.is_empty() {
        chosen = vec!["rr".into(), "ref_c".into()];
    }
    if let Some(bad) = chosen.iter().find(|c| command(c).is_none()) {
        eprintln!(
            "cpu-profile: unknown configuration {bad:?} (rr, lc, hash, ref_c, shared, ref_b, ref_c_poll, ref_c_tokio)"
        );
        std::process::exit(2);
    }
    let seconds = cluster_bench::env_or("PROFILE_SECS", 4);
    let close = std::env::var("PROFILE_LOAD").map_or(true, |l| l != "keep-alive");
    let mut rates: BTreeMap<&str, Samples> = BTreeMap::new();
    for _ in 0..rounds {
        for name in &chosen {
            let (rate, per) = run(name, seconds, close);
            let parent = per[0];
            let children = &per[1..];
            let mean = |i: usize| {
                children.iter().map(|c| c[i]).sum::<f64>() / children.len().max(1) as f64
            };
            println!(
                "{name:7} {rate:8.0} req/s | parent user {:5.1} µs sys {:5.1} µs, switches {:.2} + {:.3} | child (mean) user {:5.1} µs sys {:5.1} µs, switches {:.2} + {:.3}   (per request)",
                parent[0],
                parent[1],
                parent[2],
                parent[3],
                mean(0),
                mean(1),
                mean(2),
                mean(3)
            );
            rates
                .entry(name)
                .or_insert_with(|| Samples {
                    name: name.clone(),
                    rates: vec![],
                })
                .rates
                .push(rate);
        }
    }
    for (name, samples) in &rates {
        println!("{name}: median {:.0} req/s", samples.median());
    }
    for (ours, reference) in [
        ("rr", "ref_c"),
        ("lc", "ref_c"),
        ("hash", "ref_c"),
        ("shared", "ref_b"),
        ("ref_c_poll", "ref_c"),
        ("ref_c_tokio", "ref_c"),
        ("rr", "ref_c_tokio"),
    ] {
        if let (Some(a), Some(b)) = (rates.get(ours), rates.get(reference)) {
            println!("{ours} / {reference}: {:.2}x", a.median() / b.median());
        }
    }
}
