//! Readings of other processes from `/proc`, and signals by pid.

use rustix::process::{Pid, Signal};

/// The fields of `/proc/PID/stat` after the command name (which may hold spaces), from the
/// state on: `[0]` state, `[1]` parent pid, `[11]` utime, `[12]` stime.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// Live (not zombie) processes whose parent is `parent`, in pid order.
pub fn children_of(parent: u32) -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .expect("procfs")
        .flatten()
        .filter_map(|entry| entry.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            stat_fields(*pid).is_some_and(|f| {
                f.first().is_some_and(|state| state != "Z")
                    && f.get(1).and_then(|p| p.parse().ok()) == Some(parent)
            })
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Whether a process exists (a zombie counts: it was not reaped).
pub fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether a process exists and is not a zombie (killed, but its parent, possibly an init
/// that does not reap, has not reaped it).
pub fn process_running(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().is_some_and(|state| state != "Z"))
}

/// Resident memory of a process, in KiB (0 if it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmRSS:").unwrap_or(0)
}

/// Open descriptors of a process (0 if it is gone).
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// User plus system CPU time of a process, in clock ticks (0 if it is gone).
pub fn cpu_ticks(pid: u32) -> u64 {
    stat_fields(pid).map_or(0, |f| {
        let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        field(11) + field(12)
    })
}

/// (user ticks, system ticks, voluntary, involuntary context switches) of a process.
pub fn context_switches(pid: u32) -> (u64, u64, u64, u64) {
    let (user, system) = stat_fields(pid).map_or((0, 0), |f| {
        let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        (field(11), field(12))
    });
    (
        user,
        system,
        status_field(pid, "voluntary_ctxt_switches:").unwrap_or(0),
        status_field(pid, "nonvoluntary_ctxt_switches:").unwrap_or(0),
    )
}

fn status_field(pid: u32, name: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        line.strip_prefix(name)
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
    })
}

/// Sends `signal` to `pid` (only processes the caller started); errors are ignored, as
/// the process may be gone.
pub fn signal(pid: u32, signal: Signal) {
    if let Some(pid) = Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}
