//! What happens to workers, as reported by [`ClusterWatcher::events`](crate::ClusterWatcher::events).

use std::time::Duration;

use crate::{KillReason, StopCause, WorkerExit, WorkerId};

/// Something that happened to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A worker process was started.
    Started {
        /// Which.
        id: WorkerId,
        /// Its pid.
        pid: u32,
    },
    /// It reported ready.
    Ready {
        /// Which.
        id: WorkerId,
        /// Its pid.
        pid: u32,
    },
    /// A program given listeners counts as ready because `ready_after` passed: it was not
    /// seen waiting on its listener (nor reported `READY=1`). It is reported before
    /// [`Ready`](Self::Ready).
    ReadyByTimer {
        /// Which.
        id: WorkerId,
        /// How long after its start.
        after: Duration,
    },
    /// It was asked to stop (a restart, a scale-down, a recycling, the cluster's stop): it
    /// drains its connections from now on, until its stop timeout.
    Stopping {
        /// Which.
        id: WorkerId,
        /// Its pid.
        pid: u32,
        /// Why.
        cause: StopCause,
    },
    /// The watcher sent it `SIGKILL`.
    Killed {
        /// Which.
        id: WorkerId,
        /// Its pid.
        pid: u32,
        /// Why.
        reason: KillReason,
    },
    /// It exited and was reaped; every message and log event it sent was delivered first.
    Exited(WorkerExit),
    /// Its slot will get a new process after `delay`.
    Respawning {
        /// The slot and the generation about to start.
        id: WorkerId,
        /// Backoff before the start.
        delay: Duration,
    },
    /// Starting a process for the slot failed.
    SpawnFailed {
        /// The slot and generation.
        id: WorkerId,
        /// The error, as text.
        error: String,
    },
    /// The watcher itself did not run for `duration` (stopped, paused, starved): deadlines
    /// were moved by that much, so no worker is blamed for the watcher's silence.
    WatcherStalled {
        /// The gap between two turns of the supervision loop.
        duration: Duration,
    },
    /// A worker is being replaced for its age or memory; its replacement is starting.
    Recycling {
        /// The worker being replaced.
        id: WorkerId,
        /// Why, as text ("RSS 530 MiB over 512 MiB").
        reason: String,
    },
    /// A slot's workers keep going over the memory limit soon after they start (three in a
    /// row): the limit cannot be met by this program; recycling the slot backs off.
    MemoryLimitUnmet {
        /// The slot.
        slot: u32,
        /// The last reading of its worker's process tree.
        rss: u64,
        /// Its limit.
        limit: u64,
        /// How long the slot waits before it is recycled (or restarted) for memory again.
        backoff: Duration,
    },
    /// A rolling restart began.
    RestartStarted {
        /// Workers it will replace.
        workers: usize,
    },
    /// A rolling restart ended.
    RestartFinished {
        /// Workers replaced.
        replaced: usize,
        /// Replacements that failed (their old workers kept serving).
        failed: usize,
    },
    /// A reload began: workers started from now on run configuration `generation`.
    Reloading {
        /// The new configuration's generation.
        generation: u64,
        /// What it changed, as the caller named it.
        changed: Vec<String>,
    },
    /// Every worker of the reloaded configuration has been ready for `min_uptime`: it is
    /// kept.
    Reloaded {
        /// Its generation.
        generation: u64,
    },
    /// A reloaded configuration failed: the last good one comes back.
    RollingBack {
        /// The generation that failed.
        generation: u64,
        /// The generation that comes back.
        back_to: u64,
        /// Why, as text.
        reason: String,
    },
    /// A stop gave up waiting for processes that did not end after `SIGKILL` (stuck in the
    /// kernel); they are reaped whenever they end.
    Abandoned {
        /// Their pids.
        pids: Vec<u32>,
    },
}

/// A snapshot of one live worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerInfo {
    /// Which worker.
    pub id: WorkerId,
    /// Its pid.
    pub pid: u32,
    /// Whether it reported ready.
    pub ready: bool,
    /// Whether it is being stopped.
    pub stopping: bool,
}
