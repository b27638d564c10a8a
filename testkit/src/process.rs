//! Readings of other processes from `/proc` (through `procfs`, the tree's one reader), and
//! signals by pid.

use procfs::process::{Process, Stat};
use rustix::process::{Pid, Signal};

fn stat(pid: u32) -> Option<Stat> {
    Process::new(i32::try_from(pid).ok()?).ok()?.stat().ok()
}

/// Live (not zombie) processes whose parent is `parent`, in pid order.
pub fn children_of(parent: u32) -> Vec<u32> {
    let mut pids: Vec<u32> = procfs::process::all_processes()
        .expect("procfs")
        .flatten()
        .filter_map(|process| process.stat().ok())
        .filter(|stat| stat.state != 'Z' && stat.ppid == parent as i32)
        .map(|stat| stat.pid as u32)
        .collect();
    pids.sort_unstable();
    pids
}

/// Whether a process exists (a zombie counts: it was not reaped).
pub fn process_exists(pid: u32) -> bool {
    stat(pid).is_some()
}

/// Whether a process exists and is not a zombie (killed, but its parent, possibly an init
/// that does not reap, has not reaped it).
pub fn process_running(pid: u32) -> bool {
    stat(pid).is_some_and(|stat| stat.state != 'Z')
}

/// Resident memory of a process, in KiB (0 if it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    stat(pid).map_or(0, |stat| stat.rss * procfs::page_size() / 1024)
}

/// Open descriptors of a process (0 if it is gone).
pub fn fd_count(pid: u32) -> usize {
    i32::try_from(pid)
        .ok()
        .and_then(|pid| Process::new(pid).ok())
        .and_then(|process| process.fd_count().ok())
        .unwrap_or(0)
}

/// User plus system CPU time of a process, in clock ticks (0 if it is gone).
pub fn cpu_ticks(pid: u32) -> u64 {
    stat(pid).map_or(0, |stat| stat.utime + stat.stime)
}

/// (user ticks, system ticks, voluntary, involuntary context switches) of a process.
pub fn context_switches(pid: u32) -> (u64, u64, u64, u64) {
    let (user, system) = stat(pid).map_or((0, 0), |stat| (stat.utime, stat.stime));
    let status = i32::try_from(pid)
        .ok()
        .and_then(|pid| Process::new(pid).ok())
        .and_then(|process| process.status().ok());
    let (voluntary, involuntary) = status.map_or((0, 0), |status| {
        (
            status.voluntary_ctxt_switches.unwrap_or(0),
            status.nonvoluntary_ctxt_switches.unwrap_or(0),
        )
    });
    (user, system, voluntary, involuntary)
}

/// Sends `signal` to `pid` (only processes the caller started); errors are ignored, as
/// the process may be gone.
pub fn signal(pid: u32, signal: Signal) {
    if let Some(pid) = Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// A watcher that an upgrade started (a grandchild of the test, not its child): dropping the
/// first watcher's handle does not stop it, so this sends it `SIGTERM` when dropped (the
/// test passed or panicked) and waits up to 10 s for it to go. Set the pid as upgrades
/// replace the watcher.
#[derive(Debug, Default)]
pub struct StopOnDrop {
    /// The current watcher's pid (0: none).
    pub pid: u32,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if self.pid == 0 || !process_running(self.pid) {
            return;
        }
        signal(self.pid, Signal::TERM);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while process_running(self.pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// Raises this process's soft descriptor limit to its hard limit: a load of thousands of
/// connections needs more than the usual 1,024.
pub fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        let _ = setrlimit(Resource::Nofile, raised);
    }
}

/// Runs the future `make` returns on a two-thread tokio runtime of its own, on a thread of
/// its own (a load that must not share the test's runtime, or block it); its output when
/// joined.
pub(crate) fn on_runtime_thread<F, Fut>(make: F) -> std::thread::JoinHandle<Fut::Output>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future,
    Fut::Output: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(make())
    })
}
