//! `cluster status` as a table (`pm2 ls`-like rows), from the same [`ClusterStatus`] the
//! JSON and the metrics come from.

use std::time::Duration;

use cluster_watcher::{ClusterStatus, ConfigurationStatus, SlotStatus, WorkerStatus};

/// The status, line by line: a heading, a row per worker (or per empty slot), and the
/// balance modes' own figures when the cluster has them.
pub(crate) fn render(name: &str, status: &ClusterStatus) -> Vec<String> {
    let mut lines = vec![heading(name, status)];
    lines.extend(configuration(&status.configuration));
    lines.push(header());
    for slot in &status.slots {
        if slot.workers.is_empty() {
            lines.push(empty_slot(slot));
        }
        lines.extend(slot.workers.iter().map(|worker| row(slot, worker)));
    }
    let queues: Vec<String> = status
        .slots
        .iter()
        .filter_map(|s| Some(format!("{}:{}", s.slot, s.queued?)))
        .collect();
    if !queues.is_empty() {
        lines.push(format!(
            "listen queue by slot (reuseport): {}",
            queues.join(" ")
        ));
    }
    let cpus: Vec<(u32, &str)> = status
        .slots
        .iter()
        .flat_map(|s| &s.workers)
        .filter(|w| w.current)
        .filter_map(|w| Some((w.id.slot, w.cpus.as_deref()?)))
        .collect();
    // Shown when workers are pinned (their CPU sets differ).
    if cpus.windows(2).any(|pair| pair[0].1 != pair[1].1) {
        let cpus: Vec<String> = cpus
            .iter()
            .map(|(slot, set)| format!("{slot}:{set}"))
            .collect();
        lines.push(format!("cpus by slot: {}", cpus.join(" ")));
    }
    let open: Vec<String> = status
        .workers()
        .filter_map(|w| Some(format!("{}:{}", w.id.slot, w.open_connections?)))
        .collect();
    if !open.is_empty() {
        lines.push(format!(
            "open connections by slot (least-conn): {}",
            open.join(" ")
        ));
    }
    lines
}

/// Which configuration runs (when it came from a file, or was reloaded), and the last
/// reload that was rolled back.
fn configuration(configuration: &ConfigurationStatus) -> Vec<String> {
    let mut lines = Vec::new();
    if configuration.source.is_some() || configuration.generation > 1 {
        let changed = match configuration.changed.is_empty() {
            true => String::new(),
            false => format!("; changed {}", configuration.changed.join(", ")),
        };
        let reloading = configuration
            .reloading
            .map(|g| format!("; reloading to generation {g}"))
            .unwrap_or_default();
        lines.push(format!(
            "configuration {} generation {}, loaded {} ago{changed}{reloading}",
            configuration.source.as_deref().unwrap_or("(command line)"),
            configuration.generation,
            seconds(Some(configuration.age)),
        ));
    }
    if let Some(failed) = &configuration.failed {
        lines.push(format!(
            "reload to generation {} rolled back {} ago (changed {}): {}",
            failed.generation,
            seconds(Some(failed.age)),
            failed.changed.join(", "),
            failed.reason
        ));
    }
    lines
}

fn heading(name: &str, status: &ClusterStatus) -> String {
    let about = status.about.clone().unwrap_or_default();
    let listeners = if about.listeners.is_empty() {
        "-".to_owned()
    } else {
        about.listeners.join(", ")
    };
    format!(
        "cluster {} (pid {}, {}{}, up {}) on {}: {} of {} workers ready{}",
        if about.name.is_empty() {
            name
        } else {
            &about.name
        },
        about.pid,
        about.balance,
        if about.program_mode { ", --listen" } else { "" },
        seconds(Some(about.uptime)),
        listeners,
        status.ready_workers(),
        status.wanted_workers(),
        match status.rolling_restart {
            Some((done, total)) => format!(", rolling restart {done}/{total}"),
            None => String::new(),
        }
    )
}

fn header() -> String {
    format!(
        "{:>4}  {:>7}  {:>4}  {:<9} {:>8}  {:<22} {:<24} {:>9}  {:>7}  {:>9}",
        "slot",
        "pid",
        "gen",
        "state",
        "uptime",
        "restarts crash/hung/roll/recy",
        "last exit",
        "rss",
        "cpu",
        "heartbeat"
    )
}

fn restarts(slot: &SlotStatus) -> String {
    let r = &slot.restarts;
    format!("{}/{}/{}/{}", r.crashed, r.hung, r.rolling, r.recycled)
}

fn last_exit(slot: &SlotStatus) -> String {
    slot.last_exit
        .map_or_else(|| "-".into(), |e| format!("{} ({})", e.status, e.why()))
}

fn empty_slot(slot: &SlotStatus) -> String {
    let state = match slot.backing_off {
        Some(left) => format!("backoff {:.1}s", left.as_secs_f64()),
        None => "-".into(),
    };
    format!(
        "{:>4}  {:>7}  {:>4}  {:<9} {:>8}  {:<22} {:<24}",
        slot.slot,
        "-",
        slot.generation,
        state,
        "-",
        restarts(slot),
        last_exit(slot)
    )
}

fn row(slot: &SlotStatus, worker: &WorkerStatus) -> String {
    format!(
        "{:>4}  {:>7}  {:>4}  {:<9} {:>8}  {:<22} {:<24} {:>9}  {:>7}  {:>9}",
        slot.slot,
        worker.pid,
        worker.id.generation,
        worker.phase.as_str(),
        seconds(Some(worker.uptime)),
        restarts(slot),
        last_exit(slot),
        bytes(worker.rss.unwrap_or(0)),
        format!("{:.1}s", worker.cpu.unwrap_or_default().as_secs_f64()),
        seconds(worker.heartbeat_age),
    )
}

fn seconds(value: Option<Duration>) -> String {
    match value.map(|d| d.as_secs_f64()) {
        None => "-".into(),
        Some(s) if s < 120.0 => format!("{s:.1}s"),
        Some(s) if s < 7200.0 => format!("{:.0}m", s / 60.0),
        Some(s) => format!("{:.1}h", s / 3600.0),
    }
}

fn bytes(value: u64) -> String {
    format!("{:.1} MiB", value as f64 / (1024.0 * 1024.0))
}
