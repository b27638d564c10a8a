//! Application metrics merged across workers on `/metrics`: a `cluster-worker` program's
//! prometheus-client counter, recycled again and again under load, summed over every worker
//! the cluster ran: never lower than at the previous scrape, and equal at the end to the
//! load generator's count of answered requests.

mod support;

use std::time::{Duration, Instant};

use rustix::process::Signal;
use support::{ClusterProcess, Load, free_port, workspace_bin};

const LIMIT: Duration = Duration::from_secs(30);

/// `GET /metrics` from the cluster's metrics port.
fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// The value of the first line starting with `series`.
fn value(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `NAME` from the environment, or `default` (the full figure is a manual run:
/// `APPMETRICS_WORKERS=8 APPMETRICS_MAX_REQUESTS=1000 APPMETRICS_SECS=120`).
fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn a_counter_merged_over_recycled_workers_never_resets_and_counts_every_request() {
    let workers = knob("APPMETRICS_WORKERS", 4);
    let max_requests = knob("APPMETRICS_MAX_REQUESTS", 300).to_string();
    let seconds = knob("APPMETRICS_SECS", 8);
    let port = free_port();
    let metrics = free_port();
    let address = format!("127.0.0.1:{port}");
    let metrics_address = format!("127.0.0.1:{metrics}");
    let workers_arg = workers.to_string();
    let mut cluster = ClusterProcess::start(&[
        "-w",
        &workers_arg,
        "--max-requests",
        &max_requests,
        "--metrics",
        &metrics_address,
        workspace_bin("hello-http").to_str().unwrap(),
        &address,
    ]);
    cluster.wait_for("all workers ready", LIMIT);
    let load = Load::start(port, 3);
    let all = "hello_requests_total{worker=\"all\"}";
    let mut last = 0.0;
    let mut scrapes = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        let exposition = scrape(metrics);
        if let Some(now) = value(&exposition, all) {
            assert!(
                now >= last,
                "the merged counter went back from {last} to {now}"
            );
            last = now;
            scrapes += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, failed, _) = load.finish();
    assert!(failed.is_empty(), "{:?}", &failed[..failed.len().min(5)]);
    // The live workers report at their next heartbeat (a new one, once it registered).
    let deadline = Instant::now() + Duration::from_secs(5);
    let merged = loop {
        let exposition = scrape(metrics);
        let merged = value(&exposition, all).unwrap_or(0.0);
        assert!(merged >= last);
        let every_slot = (1..=workers).all(|slot| {
            value(
                &exposition,
                &format!("hello_requests_total{{worker=\"{slot}\"}}"),
            )
            .is_some()
        });
        if (merged as u64 == ok && every_slot) || Instant::now() > deadline {
            break (merged as u64, exposition);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let recycled: f64 = merged
        .1
        .lines()
        .filter(|l| l.starts_with("cluster_restarts_total") && l.contains("cause=\"recycled\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    eprintln!(
        "merged counter {} for {ok} answered requests, {recycled} recycles, {scrapes} scrapes never lower (-w {workers} --max-requests {max_requests}, {seconds} s)",
        merged.0
    );
    assert_eq!(merged.0, ok, "{}", merged.1);
    assert!(
        recycled >= 4.0,
        "too few recycles to prove anything: {recycled}"
    );
    // Per worker too, for each slot's newest process.
    for slot in 1..=workers {
        let series = format!("hello_requests_total{{worker=\"{slot}\"}}");
        assert!(value(&merged.1, &series).is_some(), "{series} missing");
    }
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success());
}
