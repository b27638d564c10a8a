//! Memory and CPU of a worker's whole process tree, from `/proc` (one pass over it per
//! snapshot): a worker that forks (gunicorn's master) is measured with its children.

use std::collections::HashMap;

/// One reading of every process: parent, resident memory, CPU time.
#[derive(Debug, Default)]
pub(crate) struct ProcessTable {
    /// pid -> (parent pid, RSS in bytes, user + system CPU in clock ticks)
    processes: HashMap<u32, (u32, u64, u64)>,
    ticks_per_second: u64,
}

impl ProcessTable {
    /// Reads `/proc`.
    pub(crate) fn read() -> Self {
        let page = rustix::param::page_size() as u64;
        let mut processes = HashMap::new();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    continue;
                };
                let Some((_, after)) = stat.rsplit_once(')') else {
                    continue;
                };
                let fields: Vec<&str> = after.split_whitespace().collect();
                let field = |i: usize| {
                    fields
                        .get(i)
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                // After the command: [1] ppid, [11] utime, [12] stime, [21] rss (pages).
                processes.insert(
                    pid,
                    (field(1) as u32, field(21) * page, field(11) + field(12)),
                );
            }
        }
        Self {
            processes,
            ticks_per_second: rustix::param::clock_ticks_per_second().max(1),
        }
    }

    /// (RSS in bytes, CPU seconds) of `pid` and all its descendants.
    pub(crate) fn tree_usage(&self, pid: u32) -> (u64, f64) {
        if pid == 0 || !self.processes.contains_key(&pid) {
            return (0, 0.0);
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
        (rss, ticks as f64 / self.ticks_per_second as f64)
    }
}
