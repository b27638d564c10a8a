//! Looking at a starting program given listeners, for the core's readiness
//! (`core/observe.rs`): is it waiting on one of the cluster's listening sockets? In `/proc`,
//! for it and every process below it: an epoll set holding the socket (its `fdinfo` lists
//! each watched file's inode), or a thread blocked in `accept` (`wchan`); otherwise, an epoll
//! set at all means an event loop that is still starting.

use std::collections::HashSet;

use procfs::process::{FDTarget, Process};

use crate::core::Observation;
use crate::shared::Shared;

/// The inodes of the cluster's listening sockets.
pub(crate) fn listener_inodes(shared: &Shared) -> HashSet<u64> {
    shared
        .provider
        .sockets()
        .iter()
        .filter_map(|(_, fd)| rustix::fs::fstat(&**fd).ok())
        .map(|stat| stat.st_ino)
        .collect()
}

/// What `pid` (and its descendants) show.
pub(crate) fn look(pid: u32, listeners: &HashSet<u64>) -> Observation {
    let mut seen = Observation::Unknown;
    for process in tree(pid) {
        match look_at(process, listeners) {
            Observation::Listening => return Observation::Listening,
            Observation::EventLoop => seen = Observation::EventLoop,
            Observation::Unknown => {}
        }
    }
    seen
}

fn look_at(pid: u32, listeners: &HashSet<u64>) -> Observation {
    let Ok(process) = Process::new(pid as i32) else {
        return Observation::Unknown;
    };
    let Ok(fds) = process.fd() else {
        return Observation::Unknown;
    };
    let mut event_loop = false;
    for fd in fds.flatten() {
        if !matches!(&fd.target, FDTarget::AnonInode(kind) if kind == "[eventpoll]") {
            continue;
        }
        event_loop = true;
        // procfs does not parse an epoll set's `fdinfo`: read here.
        let info = format!("/proc/{pid}/fdinfo/{}", fd.fd);
        if std::fs::read_to_string(info).is_ok_and(|text| watches(&text, listeners)) {
            return Observation::Listening;
        }
    }
    if accepting(&process) {
        return Observation::Listening;
    }
    match event_loop {
        true => Observation::EventLoop,
        false => Observation::Unknown,
    }
}

/// Whether an epoll set's `fdinfo` watches one of `listeners` (`tfd: … ino:HEX …`).
fn watches(fdinfo: &str, listeners: &HashSet<u64>) -> bool {
    fdinfo
        .lines()
        .filter(|line| line.starts_with("tfd:"))
        .filter_map(|line| line.split_whitespace().find_map(|w| w.strip_prefix("ino:")))
        .filter_map(|hex| u64::from_str_radix(hex, 16).ok())
        .any(|inode| listeners.contains(&inode))
}

/// Whether a thread of `process` is blocked in `accept` (procfs reads a process's `wchan`
/// but not a thread's: read here).
fn accepting(process: &Process) -> bool {
    let Ok(tasks) = process.tasks() else {
        return false;
    };
    tasks.flatten().any(|task| {
        let wchan = format!("/proc/{}/task/{}/wchan", task.pid, task.tid);
        std::fs::read_to_string(wchan).is_ok_and(|wchan| wchan.trim() == "inet_csk_accept")
    })
}

/// `pid` and its descendants, through each task's `children`.
fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut next = 0;
    while next < all.len() && all.len() < 256 {
        let current = all[next];
        next += 1;
        let Ok(tasks) = Process::new(current as i32).and_then(|p| p.tasks()) else {
            continue;
        };
        for task in tasks.flatten() {
            all.extend(task.children().unwrap_or_default());
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_epoll_set_holding_the_listener_is_seen_and_one_without_it_is_an_event_loop() {
        // tokio registers the socket in its runtime's epoll set when it is made.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let inode = rustix::fs::fstat(&listener).unwrap().st_ino;
        let me = std::process::id();
        assert_eq!(look(me, &HashSet::from([inode])), Observation::Listening);
        assert_eq!(
            look(me, &HashSet::from([inode + 1])),
            Observation::EventLoop
        );
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let plain = rustix::fs::fstat(&plain).unwrap().st_ino;
        assert_eq!(look(me, &HashSet::from([plain])), Observation::EventLoop);
    }
}
