//! Signals: stop, rolling restart, scaling, (SIGHUP) a reload of the configuration, and
//! (SIGUSR2) an upgrade of the watcher itself.
//!
//! The loop that reads them never awaits the watcher: every command takes effect when it is
//! sent, and its outcome (which can take up to the ready or shutdown timeout) is logged by a
//! task of its own. A SIGTERM is therefore seen at once whatever a worker is doing, and a
//! burst of SIGTTIN and SIGTTOU nets out exactly: each delivery is counted by the signal
//! handler itself (`fdpass::count_signal`), since the runtime's stream wakes once for
//! several that came close together.

use anyhow::Context;
use cluster_watcher::ClusterWatcher;
use rustix::process::Signal;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::{AbortHandle, JoinSet};
use tracing::Instrument;

use crate::args::MAX_WORKERS;

/// The signals the cluster acts on, registered before the first worker exists so none is
/// missed (nor, for SIGTTIN and SIGTTOU, given its default action of stopping the process).
#[derive(Debug)]
pub(crate) struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
    user1: tokio::signal::unix::Signal,
    user2: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
    more: tokio::signal::unix::Signal,
    fewer: tokio::signal::unix::Signal,
    /// Every SIGTTIN and SIGTTOU delivered: the streams above wake once for several that
    /// came close together, and each one must move the worker count.
    more_count: fdpass::SignalCount,
    fewer_count: fdpass::SignalCount,
    /// `--reopen-signal`: its number and stream.
    reopen: Option<(i32, tokio::signal::unix::Signal)>,
    /// The worker count SIGTTIN and SIGTTOU asked for so far (set at the first
    /// [`supervise`](Self::supervise)).
    target: Option<usize>,
}

/// Why [`Signals::supervise`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Supervised {
    /// A stop signal, by name.
    Stop(&'static str),
    /// SIGUSR2: upgrade the watcher.
    Upgrade,
    /// SIGHUP: reload the configuration (`systemctl reload` sends it).
    Reload,
    /// `--reopen-signal`: open the log file again.
    ReopenLogs,
}

impl Signals {
    /// Registers the handlers.
    ///
    /// # Errors
    /// When the runtime cannot install a handler.
    pub(crate) fn register(reopen: Option<i32>) -> anyhow::Result<Self> {
        let on = |kind: SignalKind| signal(kind).context("cannot register signal handlers");
        let reopen = match reopen {
            Some(number) => Some((number, on(SignalKind::from_raw(number))?)),
            None => None,
        };
        Ok(Self {
            interrupt: on(SignalKind::interrupt())?,
            terminate: on(SignalKind::terminate())?,
            quit: on(SignalKind::quit())?,
            user1: on(SignalKind::user_defined1())?,
            user2: on(SignalKind::user_defined2())?,
            hangup: on(SignalKind::hangup())?,
            more: on(SignalKind::from_raw(Signal::TTIN.as_raw()))?,
            fewer: on(SignalKind::from_raw(Signal::TTOU.as_raw()))?,
            more_count: fdpass::count_signal(Signal::TTIN.as_raw())
                .context("cannot count SIGTTIN")?,
            fewer_count: fdpass::count_signal(Signal::TTOU.as_raw())
                .context("cannot count SIGTTOU")?,
            reopen,
            target: None,
        })
    }

    /// From now on SIGTTIN and SIGTTOU count from `workers` (a reload changed the count).
    pub(crate) fn set_target(&mut self, workers: usize) {
        self.target = Some(workers);
    }

    /// Waits for a signal that stops the cluster; its name.
    pub(crate) async fn stop(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.quit.recv() => "SIGQUIT",
        }
    }

    /// Acts on restart and scaling signals for a cluster started with `workers` workers, until
    /// a stop signal or SIGUSR2 arrives. Outcomes still pending then are no longer logged (the
    /// commands themselves were already carried out or stand).
    pub(crate) async fn supervise(
        &mut self,
        watcher: &ClusterWatcher,
        workers: usize,
    ) -> Supervised {
        // The count the signals asked for so far: each SIGTTIN or SIGTTOU moves it by one and
        // applies it at once, so a burst nets out exactly however slowly workers start.
        let mut target = *self.target.get_or_insert(workers);
        let mut outcomes = JoinSet::new();
        let mut restart: Option<AbortHandle> = None;
        loop {
            // Reap finished outcome tasks, so a long run of signals does not pile them up.
            while outcomes.try_join_next().is_some() {}
            tokio::select! {
                _ = self.interrupt.recv() => return Supervised::Stop("SIGINT"),
                _ = self.terminate.recv() => return Supervised::Stop("SIGTERM"),
                _ = self.quit.recv() => return Supervised::Stop("SIGQUIT"),
                _ = self.user2.recv() => return Supervised::Upgrade,
                Some(()) = recv_reopen(&mut self.reopen) => return Supervised::ReopenLogs,
                // A signal taken by --reopen-signal does only that.
                _ = self.user1.recv() => {
                    if !self.reopens(Signal::USR1) {
                        restart = Some(request_restart(watcher, "SIGUSR1", restart, &mut outcomes));
                    }
                }
                _ = self.hangup.recv() => {
                    if !self.reopens(Signal::HUP) {
                        return Supervised::Reload;
                    }
                }
                _ = self.more.recv() => {
                    for _ in 0..self.more_count.take() {
                        if target >= MAX_WORKERS as usize {
                            tracing::warn!(workers = target, "SIGTTIN: already at the most workers allowed");
                        } else {
                            target += 1;
                            self.target = Some(target);
                            scale(watcher, target, "SIGTTIN: added a worker", &mut outcomes);
                        }
                    }
                }
                _ = self.fewer.recv() => {
                    for _ in 0..self.fewer_count.take() {
                        if target <= 1 {
                            tracing::warn!("SIGTTOU: the last worker stays");
                        } else {
                            target -= 1;
                            self.target = Some(target);
                            scale(watcher, target, "SIGTTOU: removed a worker", &mut outcomes);
                        }
                    }
                }
            }
        }
    }
}

impl Signals {
    /// Whether `signal` is the one `--reopen-signal` took.
    fn reopens(&self, signal: Signal) -> bool {
        self.reopen
            .as_ref()
            .is_some_and(|(number, _)| *number == signal.as_raw())
    }
}

/// The next `--reopen-signal`, never without one.
async fn recv_reopen(reopen: &mut Option<(i32, tokio::signal::unix::Signal)>) -> Option<()> {
    match reopen {
        Some((_, stream)) => stream.recv().await,
        None => std::future::pending().await,
    }
}

/// Asks for `workers` workers now; a task logs `done` (or the error) once the watcher applied
/// it. New workers are then starting; the watcher logs when each is ready.
fn scale(watcher: &ClusterWatcher, workers: usize, done: &'static str, outcomes: &mut JoinSet<()>) {
    let scaled = watcher.scale(workers);
    outcomes.spawn(
        async move {
            match scaled.await {
                Ok(()) => tracing::info!(workers, "{done}"),
                Err(e) => tracing::error!(workers, error = %e, "could not scale the cluster"),
            }
        }
        .in_current_span(),
    );
}

/// Asks for a rolling restart now; a task logs its outcome. `previous` is the last request's
/// task: if it still runs, this request joins the one restart that follows the running one
/// (the watcher coalesces them).
fn request_restart(
    watcher: &ClusterWatcher,
    signal: &'static str,
    previous: Option<AbortHandle>,
    outcomes: &mut JoinSet<()>,
) -> AbortHandle {
    if previous.is_some_and(|task| !task.is_finished()) {
        tracing::info!(signal, "restart already in progress: one more follows it");
    } else {
        tracing::info!(signal, "rolling restart");
    }
    let restarted = watcher.restart();
    outcomes.spawn(
        async move {
            match restarted.await {
                Ok(()) => tracing::info!(signal, "rolling restart complete"),
                Err(e) => tracing::error!(
                    signal,
                    error = %e,
                    "rolling restart incomplete; old workers kept where replacements failed"
                ),
            }
        }
        .in_current_span(),
    )
}
