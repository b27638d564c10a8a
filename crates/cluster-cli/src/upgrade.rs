//! Upgrading the watcher itself (`SIGUSR2`, `cluster upgrade`), the `cluster` binary's use
//! of `cluster_watcher`'s upgrade protocol.
//!
//! The old watcher starts the binary it was started from (looked up again by path, so a new
//! build installed there is what runs) with its own arguments and environment, and hands it
//! the listening sockets and the worker count. The new watcher starts its workers on those
//! sockets; once all are ready the old one lets go of its pid file, control socket and
//! metrics port, tells the service manager the new `MAINPID`, passes on every connection it
//! would have handed to a worker, stops its workers gracefully and exits. If the new watcher
//! fails (it exits, or its workers are not ready in time), the old one kills it and goes on
//! serving; the reason is logged and returned to `cluster upgrade`.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use cluster_watcher::{ClusterWatcher, SuccessorLink};

/// The path this process was started from, read at start-up: later, `/proc/self/exe` names
/// the old file (` (deleted)`) once a new build replaced it.
static STARTED_FROM: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Records the binary's path; call first thing.
pub(crate) fn remember_binary() {
    STARTED_FROM.get_or_init(|| std::env::current_exe().ok());
}

/// A new watcher whose workers are all ready, waiting for this one to let go.
#[derive(Debug)]
pub(crate) struct Successor {
    pub(crate) link: SuccessorLink,
    pub(crate) pid: u32,
    /// Kept so the process is not reaped behind our back; never killed once handed over.
    pub(crate) child: tokio::process::Child,
}

/// Starts a new watcher from the binary's path and hands it the sockets; returns once its
/// `workers` workers are all ready (within `ready_timeout` and a margin for its start).
///
/// # Errors
/// The binary cannot run, the new watcher exits or fails, or is not ready in time; it is
/// killed then (and its workers with it), and this watcher goes on as before.
pub(crate) async fn start_successor(
    watcher: &ClusterWatcher,
    workers: usize,
    ready_timeout: Duration,
) -> anyhow::Result<Successor> {
    let binary = STARTED_FROM
        .get()
        .cloned()
        .flatten()
        .context("the path of this binary is unknown")?;
    let (link, ends) = SuccessorLink::new()?;
    let mut command = std::process::Command::new(&binary);
    command.args(std::env::args_os().skip(1));
    // What socket activation gave this process is not the new one's: it gets the sockets
    // over the link.
    for name in [
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "LISTEN_PIDFDID",
    ] {
        command.env_remove(name);
    }
    ends.pass_to(&mut command);
    let mut command = tokio::process::Command::from(command);
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    let pid = child.id().unwrap_or(0);
    // Until its workers are ready, the new watcher dies if this future is dropped (a stop
    // signal came first) or fails; its workers die with it.
    let mut abandon = KillUnlessKept(Some(pid));
    tracing::info!(pid, binary = %binary.display(), "upgrade: new watcher started");
    let outcome = async {
        link.send_sockets(watcher, workers)
            .await
            .context("handing over the sockets")?;
        // Its workers' ready timeout, and a margin for the watcher's own start.
        let limit = ready_timeout + Duration::from_secs(10);
        tokio::select! {
            ready = link.wait_ready(limit) => ready.map_err(anyhow::Error::from),
            status = child.wait() => Err(anyhow::anyhow!(
                "the new watcher exited before its workers were ready ({})",
                status.map_or_else(|e| e.to_string(), |s| s.to_string())
            )),
        }
    }
    .await;
    match outcome {
        Ok(_) => {
            abandon.0 = None;
            Ok(Successor { link, pid, child })
        }
        Err(error) => {
            // Its workers die with it (they are killed when their watcher goes).
            drop(abandon);
            watcher.upgrade_abandoned();
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            Err(error)
        }
    }
}

/// `SIGKILL`s the new watcher when dropped, unless it was kept.
struct KillUnlessKept(Option<u32>);

impl Drop for KillUnlessKept {
    fn drop(&mut self) {
        let pid = self
            .0
            .and_then(|pid| rustix::process::Pid::from_raw(pid as i32));
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}
