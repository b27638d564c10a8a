//! Staying on as a container's init after an upgrade.
//!
//! When the watcher is PID 1 (a container's entry point, `unshare --pid`), its exit ends
//! the whole PID namespace, workers and the new watcher included. So after handing over, it
//! does not exit: it becomes a minimal init. The new watcher is its child; every signal the
//! container gets (a `docker stop`'s SIGTERM, a SIGUSR1 for a restart) is passed on to it,
//! every orphan that comes to PID 1 is reaped, and when the last child is gone it exits with
//! the new watcher's status.

use std::process::ExitCode;

use rustix::process::{Pid, Signal, WaitOptions};
use tokio::signal::unix::{SignalKind, signal};

/// The signals passed on to the children.
const FORWARDED: [Signal; 9] = [
    Signal::TERM,
    Signal::INT,
    Signal::QUIT,
    Signal::HUP,
    Signal::USR1,
    Signal::USR2,
    Signal::TTIN,
    Signal::TTOU,
    Signal::WINCH,
];

/// Runs as init until every child is gone; the exit status of the last watcher (or 1 if
/// none was seen to exit).
pub(crate) async fn stay_as_init(mut successor: tokio::process::Child) -> ExitCode {
    let first = successor.id().unwrap_or(0);
    tracing::info!(
        successor = first,
        "PID 1: staying as the namespace's init while the new watcher runs"
    );
    let mut streams = Vec::new();
    for forwarded in FORWARDED {
        if let Ok(stream) = signal(SignalKind::from_raw(forwarded.as_raw())) {
            streams.push((forwarded, stream));
        }
    }
    let Ok(mut children) = signal(SignalKind::child()) else {
        return ExitCode::FAILURE;
    };
    let mut status: Option<ExitCode> = None;
    let mut successor_done = false;
    loop {
        // The first successor is tokio's child (it reaps it); the rest come to us as orphans.
        let spare = if successor_done { 0 } else { first };
        if let Some(code) = reap(spare) {
            status = Some(code);
        }
        if successor_done && crate::orphans::child_pids().is_empty() {
            return status.unwrap_or(ExitCode::FAILURE);
        }
        tokio::select! {
            forwarded = futures_any(&mut streams) => forward(forwarded),
            exited = successor.wait(), if !successor_done => {
                successor_done = true;
                status = Some(exited.map_or(ExitCode::FAILURE, |s| {
                    ExitCode::from(u8::try_from(s.code().unwrap_or(1)).unwrap_or(1))
                }));
            }
            _ = children.recv() => {}
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}

/// The next forwarded signal to arrive.
async fn futures_any(streams: &mut [(Signal, tokio::signal::unix::Signal)]) -> Signal {
    std::future::poll_fn(|cx| {
        for (which, stream) in streams.iter_mut() {
            if stream.poll_recv(cx).is_ready() {
                return std::task::Poll::Ready(*which);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Passes `which` on to every child.
fn forward(which: Signal) {
    for pid in crate::orphans::child_pids() {
        if let Some(pid) = Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(pid, which);
        }
    }
}

/// Reaps every exited child but `spare` (tokio's own); the status of the last reaped.
fn reap(spare: u32) -> Option<ExitCode> {
    let mut last = None;
    for pid in zombie_children() {
        if pid as u32 == spare {
            continue;
        }
        if let Some(pid) = Pid::from_raw(pid)
            && let Ok(Some((_, status))) = rustix::process::waitpid(Some(pid), WaitOptions::NOHANG)
        {
            let code = status.exit_status().unwrap_or(1) & 0xff;
            last = Some(ExitCode::from(u8::try_from(code).unwrap_or(1)));
        }
    }
    last
}

/// Children that have exited and wait to be reaped.
fn zombie_children() -> Vec<i32> {
    crate::orphans::children()
        .into_iter()
        .filter_map(|(pid, zombie)| zombie.then_some(pid))
        .collect()
}
