//! Processes the cluster inherits: orphans of workers that double-fork come to the watcher
//! (a child subreaper, or PID 1 in a container) and are reaped, and killed when the cluster
//! stops.

use std::time::Duration;

use cluster_watcher::ClusterWatcher;

/// This process's children, with whether each is a zombie.
pub(crate) fn children() -> Vec<(i32, bool)> {
    child_pids()
        .into_iter()
        .filter_map(|pid| procfs::process::Process::new(pid).ok()?.stat().ok())
        .map(|stat| (stat.pid, stat.state == 'Z'))
        .collect()
}

/// This process's children's pids: from each thread's `/proc/self/task/TID/children` (a few
/// small reads, where a scan of every process in `/proc`, once a second on the watcher's
/// only thread, cost hundreds of system calls), or that scan where the kernel has no such
/// file.
pub(crate) fn child_pids() -> Vec<i32> {
    let listed: Option<Vec<i32>> = std::fs::read_dir("/proc/self/task").ok().and_then(|tasks| {
        let mut pids = Vec::new();
        for task in tasks.flatten() {
            let text = std::fs::read_to_string(task.path().join("children")).ok()?;
            pids.extend(
                text.split_whitespace()
                    .filter_map(|pid| pid.parse::<i32>().ok()),
            );
        }
        Some(pids)
    });
    listed.unwrap_or_else(|| {
        let me = std::process::id() as i32;
        procfs::process::all_processes()
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|process| process.stat().ok())
            .filter(|stat| stat.ppid == me)
            .map(|stat| stat.pid)
            .collect()
    })
}

/// Reaps every zombie child that is not a worker: orphans of double-forking workers
/// re-parented to this subreaper (or PID 1). Workers are left to the watcher, which waits for
/// each itself (the list of workers is published before any of them can be reaped).
fn reap(workers: &[u32]) {
    for (pid, zombie) in children() {
        if zombie
            && !workers.contains(&(pid as u32))
            && let Some(pid) = rustix::process::Pid::from_raw(pid)
        {
            let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG);
        }
    }
}

/// SIGKILLs and reaps every remaining child (the workers are gone by now), but `spare` (a
/// new watcher that took over).
pub(crate) fn kill_all(spare: Option<u32>) {
    for _ in 0..3 {
        let left: Vec<i32> = children()
            .into_iter()
            .map(|(pid, _)| pid)
            .filter(|&pid| spare != Some(pid as u32))
            .collect();
        if left.is_empty() {
            return;
        }
        for pid in left {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
            }
        }
    }
}

/// Reaps orphans every second, for as long as the cluster runs.
pub(crate) async fn reaper(watcher: &ClusterWatcher) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticks.tick().await;
        let workers: Vec<u32> = watcher.workers().iter().map(|w| w.pid).collect();
        reap(&workers);
    }
}
