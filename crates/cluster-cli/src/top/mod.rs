//! `cluster top`: a live view of a running cluster over its control socket, refreshed every
//! second: per worker its state, requests per second (connections per second for programs
//! that do not serve through cluster-worker's loops), open connections, CPU,
//! memory, restarts and last exit; `r` restarts, `+` and `-` scale, `q` quits. With `--json`,
//! one line per refresh for scripts instead.
//!
//! It asks for a status each refresh, nothing more (the watcher measures each worker's
//! process tree for it); the rates are worked out here from two snapshots.

mod view;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use cluster_ipc::control::{ControlClient, Request, Response};
use cluster_watcher::ClusterStatus;
use serde::Serialize;

/// One worker as `top` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Row {
    slot: u32,
    generation: u32,
    pid: u32,
    state: &'static str,
    current: bool,
    /// HTTP requests answered per second since the last refresh (cluster-worker serve loops).
    requests_per_second: Option<f64>,
    /// Connections accepted per second since the last refresh (cluster-worker programs).
    accepted_per_second: Option<f64>,
    open_connections: Option<u64>,
    /// Percent of one CPU since the last refresh.
    cpu_percent: Option<f64>,
    rss_bytes: Option<u64>,
    restarts: u64,
    last_exit: Option<String>,
}

/// The whole view at one refresh.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Frame {
    name: String,
    ready: usize,
    wanted: usize,
    rows: Vec<Row>,
}

/// Turns snapshots into rates: the previous one's counters by pid.
#[derive(Debug, Default)]
pub(crate) struct Rates {
    previous: HashMap<u32, Counts>,
}

/// A worker's counters at one refresh.
#[derive(Debug, Clone, Copy)]
struct Counts {
    at: Instant,
    accepted: Option<u64>,
    requests: Option<u64>,
    cpu: Option<Duration>,
}

impl Rates {
    /// The frame of `status`, taken at `now`.
    pub(crate) fn frame(&mut self, status: &ClusterStatus, now: Instant) -> Frame {
        let mut rows = Vec::new();
        let mut seen = HashMap::new();
        for slot in &status.slots {
            let restarts = slot.restarts.crashed
                + slot.restarts.hung
                + slot.restarts.rolling
                + slot.restarts.requested
                + slot.restarts.recycled;
            for worker in &slot.workers {
                let before = self.previous.get(&worker.pid);
                let per_second = |now_value: f64, then_value: f64, then: Instant| {
                    let elapsed = now.saturating_duration_since(then).as_secs_f64();
                    (elapsed > 0.0).then(|| (now_value - then_value).max(0.0) / elapsed)
                };
                let count_rate =
                    |now_count: Option<u64>, then_count: fn(&Counts) -> Option<u64>| {
                        let then = before?;
                        per_second(now_count? as f64, then_count(then)? as f64, then.at)
                    };
                let accepted = count_rate(worker.accepted, |c| c.accepted);
                let requests = count_rate(worker.requests, |c| c.requests);
                let cpu = match (
                    worker.cpu,
                    before.and_then(|c| c.cpu.map(|cpu| (c.at, cpu))),
                ) {
                    (Some(now_cpu), Some((then, then_cpu))) => {
                        per_second(now_cpu.as_secs_f64(), then_cpu.as_secs_f64(), then)
                            .map(|share| share * 100.0)
                    }
                    _ => None,
                };
                let counts = Counts {
                    at: now,
                    accepted: worker.accepted,
                    requests: worker.requests,
                    cpu: worker.cpu,
                };
                seen.insert(worker.pid, counts);
                rows.push(Row {
                    slot: slot.slot,
                    generation: worker.id.generation,
                    pid: worker.pid,
                    state: worker.phase.as_str(),
                    current: worker.current,
                    requests_per_second: requests,
                    accepted_per_second: accepted,
                    open_connections: worker.open_connections,
                    cpu_percent: cpu,
                    rss_bytes: worker.rss,
                    restarts,
                    last_exit: slot.last_exit.map(|e| e.status.to_string()),
                });
            }
        }
        self.previous = seen;
        let name = status
            .about
            .as_ref()
            .map(|a| a.name.clone())
            .unwrap_or_default();
        Frame {
            name,
            ready: status.ready_workers(),
            wanted: status.wanted_workers(),
            rows,
        }
    }
}

/// Asks the cluster at `path` for its status.
fn status(path: &Path) -> anyhow::Result<ClusterStatus> {
    let mut client = ControlClient::connect(path, Some(Duration::from_secs(5)))
        .with_context(|| format!("no cluster answers on {}", path.display()))?;
    match client.ask(&Request::Status)? {
        Response::Status(status) => Ok(*status),
        Response::Failed(why) => anyhow::bail!("{why}"),
        other => anyhow::bail!("an answer that does not fit: {other:?}"),
    }
}

/// Runs `cluster top` against the cluster at `path`.
///
/// # Errors
/// When the cluster does not answer, or the terminal cannot be used.
pub(crate) fn run(path: &Path, every: Duration, json: bool) -> anyhow::Result<()> {
    if json {
        return json_lines(path, every);
    }
    view::run(path, every)
}

/// `--json`: one frame per line, for ever (until the cluster goes or output is closed).
fn json_lines(path: &Path, every: Duration) -> anyhow::Result<()> {
    use std::io::Write;
    let mut rates = Rates::default();
    let mut out = std::io::stdout().lock();
    loop {
        let frame = rates.frame(&status(path)?, Instant::now());
        writeln!(out, "{}", serde_json::to_string(&frame)?)?;
        out.flush()?;
        std::thread::sleep(every);
    }
}

/// Sends `request` to the cluster on a thread of its own (a restart answers only when done),
/// so the view keeps refreshing.
fn send_in_background(path: &Path, request: Request) {
    let path = path.to_owned();
    std::thread::spawn(move || {
        if let Ok(mut client) = ControlClient::connect(&path, None) {
            let _ = client.ask(&request);
        }
    });
}
