//! What the driver reads from the system when asked: each worker's memory and CPU (its
//! whole process tree: a worker that forks, gunicorn's master, is measured with its
//! children), and the figures only the balancing layer knows (the reuseport slots' accept
//! queues, the least-conn workers' open connections).

use std::collections::HashMap;
use std::time::Duration;

use crate::ClusterStatus;
use crate::balance::{Mode, queued_by_slot};
use crate::shared::Shared;

/// One reading of every process: parent, resident memory, CPU time.
#[derive(Debug, Default)]
pub(crate) struct ProcessTable {
    /// pid -> (parent pid, RSS in bytes, user + system CPU in clock ticks)
    processes: HashMap<u32, (u32, u64, u64)>,
    ticks_per_second: u64,
}

impl ProcessTable {
    /// Reads `/proc` (one pass).
    pub(crate) fn read() -> Self {
        let page = procfs::page_size();
        let processes = procfs::process::all_processes()
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|process| process.stat().ok())
            .map(|stat| {
                let pid = stat.pid as u32;
                (
                    pid,
                    (stat.ppid as u32, stat.rss * page, stat.utime + stat.stime),
                )
            })
            .collect();
        Self {
            processes,
            ticks_per_second: procfs::ticks_per_second().max(1),
        }
    }

    /// (RSS in bytes, CPU time) of `pid` and all its descendants.
    pub(crate) fn tree_usage(&self, pid: u32) -> (u64, Duration) {
        if pid == 0 || !self.processes.contains_key(&pid) {
            return (0, Duration::ZERO);
        }
        let (mut rss, mut ticks) = (0, 0);
        let mut frontier = vec![pid];
        while let Some(current) = frontier.pop() {
            if let Some((_, r, t)) = self.processes.get(&current) {
                rss += r;
                ticks += t;
            }
            frontier.extend(
                self.processes
                    .iter()
                    .filter(|(_, (parent, _, _))| *parent == current)
                    .map(|(child, _)| *child),
            );
        }
        let cpu = Duration::from_secs_f64(ticks as f64 / self.ticks_per_second as f64);
        (rss, cpu)
    }
}

/// Adds each worker's memory and CPU (its process tree's) to a status.
pub(crate) fn add_usage(status: &mut ClusterStatus) {
    let table = ProcessTable::read();
    for slot in &mut status.slots {
        for worker in &mut slot.workers {
            let (rss, cpu) = table.tree_usage(worker.pid);
            worker.rss = Some(rss);
            worker.cpu = Some(cpu);
            worker.cpus = allowed_cpus(worker.pid);
        }
    }
}

/// The CPUs `pid` may run on, as `/proc` lists them (`0-3`).
fn allowed_cpus(pid: u32) -> Option<String> {
    let status = procfs::process::Process::new(pid as i32)
        .ok()?
        .status()
        .ok()?;
    status.cpus_allowed_list.map(|ranges| {
        ranges
            .iter()
            .map(|(first, last)| match first == last {
                true => first.to_string(),
                false => format!("{first}-{last}"),
            })
            .collect::<Vec<_>>()
            .join(",")
    })
}

/// Adds the slots' accept queues (reuseport) and the workers' open connections (least-conn)
/// to a status.
pub(crate) fn add_balancing(status: &mut ClusterStatus, shared: &Shared) {
    let mode = Mode::of(shared.config().balance);
    let open = if mode.counts_open() {
        shared.balancer.open_connections()
    } else {
        HashMap::new()
    };
    let queued = mode.per_slot().then(|| queued_by_slot(&shared.provider));
    for slot in &mut status.slots {
        if let Some(queued) = &queued {
            slot.queued = Some(queued.get(&slot.slot).copied().unwrap_or(0));
        }
        for worker in &mut slot.workers {
            // What the worker says it holds; else (least-conn) what the watcher counts.
            worker.open_connections = worker
                .open_connections
                .or_else(|| open.get(&worker.id).copied());
        }
    }
}
