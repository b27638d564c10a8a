//! Finding and ending every process a worker started.
//!
//! Killing a worker's process group is not enough: a program that daemonizes (forks, calls
//! `setsid`, forks again, and the parent exits) leaves a process in a session of its own,
//! still serving the inherited socket with old code. So each worker is contained:
//!
//! * **A cgroup** where the watcher may make one (cgroup v2, its own cgroup writable: root,
//!   or systemd's `Delegate=yes`): every worker runs in a cgroup of its own under
//!   `cluster-<watcher pid>-<n>/`, joined before its program runs, so whatever it forks
//!   stays there; when the worker ends, one write to `cgroup.kill` ends them all.
//! * **A mark** otherwise: every worker's environment carries [`MARK`]
//!   (`<watcher pid>-<n>.<slot>.<generation>`), which its descendants inherit (a daemon
//!   keeps it); when the worker ends, the processes whose environment bears its mark are
//!   killed. A descendant that clears its environment escapes this one; say so in the docs.
//!
//! `<n>` numbers the watchers of one process: a program that embeds two `ClusterWatcher`s
//! (the tests do) must not have one end the other's workers (it did: both named their
//! workers by the process id, slot and generation alone).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::WorkerId;

/// The environment variable that marks a worker's processes.
pub(crate) const MARK: &str = "CLUSTER_WORKER_MARK";

/// Set to `off` to use marks even where cgroups would work (tests of the fallback).
const ENV_CGROUPS: &str = "CLUSTER_CGROUPS";

/// How this watcher contains its workers.
#[derive(Debug)]
pub(crate) struct Containment {
    how: How,
    /// This watcher's name among the process's: `<pid>-<n>`.
    name: String,
}

#[derive(Debug)]
enum How {
    /// `cluster-<name>/` in the watcher's own cgroup.
    Cgroups(PathBuf),
    /// Environment marks.
    Marks,
}

/// The watchers made in this process so far.
static WATCHERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Containment {
    /// Cgroups if a directory can be made in this process's cgroup v2, marks otherwise.
    pub(crate) fn detect() -> Self {
        let n = WATCHERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{}-{n}", std::process::id());
        let how = Self::how(&name);
        Self { how, name }
    }

    fn how(name: &str) -> How {
        if std::env::var(ENV_CGROUPS).is_ok_and(|v| v == "off") {
            return How::Marks;
        }
        let Some(own) = own_cgroup() else {
            return How::Marks;
        };
        // A cgroup that hands controllers to its children may hold no process but through
        // them: moving workers below this one would be refused.
        let delegating = std::fs::read_to_string(own.join("cgroup.subtree_control"))
            .map_or(true, |controllers| !controllers.trim().is_empty());
        if delegating {
            return How::Marks;
        }
        let dir = own.join(format!("cluster-{name}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => How::Cgroups(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => How::Cgroups(dir),
            Err(_) => How::Marks,
        }
    }

    /// Marks `command` as `id`'s and, with cgroups, makes it join `id`'s cgroup before it
    /// runs. A cgroup that cannot be made leaves the mark alone to find it.
    pub(crate) fn prepare(&self, command: &mut std::process::Command, id: WorkerId) {
        command.env(MARK, self.mark(id));
        let How::Cgroups(root) = &self.how else {
            return;
        };
        let dir = worker_dir(root, id);
        let procs = std::fs::create_dir(&dir).and_then(|()| {
            std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(rustix::fs::OFlags::CLOEXEC.bits() as i32)
                .open(dir.join("cgroup.procs"))
        });
        match procs {
            Ok(procs) => fdpass::join_cgroup(command, procs.into()),
            Err(e) => {
                tracing::debug!(error = %e, cgroup = %dir.display(), "no cgroup for the worker; its mark finds what it leaves")
            }
        }
    }

    /// Ends whatever `id` left behind (its main process has exited).
    pub(crate) fn end(&self, id: WorkerId) {
        if let How::Cgroups(root) = &self.how {
            let dir = worker_dir(root, id);
            if dir.exists() {
                kill_cgroup(&dir);
                let _ = std::fs::remove_dir(&dir);
                return;
            }
        }
        kill_marked(&self.mark(id));
    }

    fn mark(&self, id: WorkerId) -> String {
        format!("{}.{}.{}", self.name, id.slot, id.generation)
    }
}

impl Drop for Containment {
    fn drop(&mut self) {
        if let How::Cgroups(root) = &self.how {
            for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
                if entry.path().is_dir() {
                    kill_cgroup(&entry.path());
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
            let _ = std::fs::remove_dir(root);
        }
    }
}

fn worker_dir(root: &Path, id: WorkerId) -> PathBuf {
    root.join(format!("w{}-{}", id.slot, id.generation))
}

/// This process's cgroup v2 directory, from `/proc/self/cgroup` and the mount table.
fn own_cgroup() -> Option<PathBuf> {
    let path = procfs::process::Process::myself()
        .ok()?
        .cgroups()
        .ok()?
        .into_iter()
        .find(|group| group.hierarchy == 0)?
        .pathname;
    let mount = procfs::process::Process::myself()
        .ok()?
        .mountinfo()
        .ok()?
        .into_iter()
        .find(|m| m.fs_type == "cgroup2")?
        .mount_point;
    Some(mount.join(path.trim_start_matches('/')))
}

/// Kills every process of a cgroup: `cgroup.kill` (Linux 5.14), else one by one until it
/// is empty (a few rounds: a fork may race the reading).
fn kill_cgroup(dir: &Path) {
    if std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.kill"))
        .and_then(|mut kill| kill.write_all(b"1"))
        .is_ok()
    {
        return;
    }
    for _ in 0..5 {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        let pids: Vec<i32> = procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// Kills every process whose environment bears `mark`.
fn kill_marked(mark: &str) {
    let wanted = std::ffi::OsString::from(mark);
    let me = std::process::id() as i32;
    for process in procfs::process::all_processes()
        .into_iter()
        .flatten()
        .flatten()
    {
        if process.pid == me {
            continue;
        }
        let marked = process
            .environ()
            .is_ok_and(|env| env.get(std::ffi::OsStr::new(MARK)) == Some(&wanted));
        if marked && let Some(pid) = rustix::process::Pid::from_raw(process.pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}
