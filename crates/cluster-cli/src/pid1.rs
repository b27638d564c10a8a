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

/// Runs as init until every child is gone; the exit status of `successor` (or of the
/// watcher that followed it), or 1 if it was never seen to exit.
pub(crate) async fn stay_as_init(successor: u32) -> ExitCode {
    tracing::info!(
        successor,
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
    let mut status = ExitCode::FAILURE;
    loop {
        if let Some(code) = reap() {
            status = code;
        }
        if !has_children() {
            return status;
        }
        let received = futures_any(&mut streams);
        tokio::select! {
            forwarded = received => forward(forwarded),
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
    for pid in child_pids() {
        if let Some(pid) = Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(pid, which);
        }
    }
}

/// Reaps every exited child; the status of the last watcher among them, if any.
fn reap() -> Option<ExitCode> {
    let mut last = None;
    while let Ok(Some((_, status))) = rustix::process::wait(WaitOptions::NOHANG) {
        let code = status.exit_status().map_or(1, |code| code & 0xff);
        last = Some(ExitCode::from(u8::try_from(code).unwrap_or(1)));
    }
    last
}

fn child_pids() -> Vec<i32> {
    let me = std::process::id() as i32;
    procfs::process::all_processes()
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|process| process.stat().ok())
        .filter(|stat| stat.ppid == me)
        .map(|stat| stat.pid)
        .collect()
}

fn has_children() -> bool {
    !child_pids().is_empty()
}
