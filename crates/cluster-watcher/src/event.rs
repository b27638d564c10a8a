//! What happens to workers, as reported by [`ClusterWatcher::events`](crate::ClusterWatcher::events).

use std::fmt;
use std::process::ExitStatus;
use std::time::Duration;

/// A worker process: its slot (stable across restarts), generation and pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId {
    /// Slot number, from 1.
    pub slot: u32,
    /// Start count of the slot, from 1.
    pub generation: u32,
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.slot)
    }
}

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// It exited with this status code.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
}

impl From<ExitStatus> for ExitKind {
    fn from(status: ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => Self::Code(code),
            (None, Some(signal)) => Self::Signal(signal),
            (None, None) => Self::Code(-1),
        }
    }
}

impl fmt::Display for ExitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Code(code) => write!(f, "exit status {code}"),
            Self::Signal(9) => f.write_str("signal 9 (SIGKILL)"),
            Self::Signal(15) => f.write_str("signal 15 (SIGTERM)"),
            Self::Signal(signal) => write!(f, "signal {signal}"),
        }
    }
}

/// Why the watcher killed a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KillReason {
    /// No heartbeat within the heartbeat timeout: its runtime is blocked or it hangs.
    HeartbeatTimeout,
    /// It did not report ready within the ready timeout.
    ReadyTimeout,
    /// It did not finish within the shutdown timeout after being asked to stop (or after it
    /// closed its control socket).
    ShutdownTimeout,
    /// It broke the protocol on its control socket.
    BadTraffic,
    /// Its memory went past the hard ceiling (1.5 times `max_memory`) faster than it could
    /// be recycled.
    MemoryCeiling,
}

impl fmt::Display for KillReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::HeartbeatTimeout => "heartbeat timeout",
            Self::ReadyTimeout => "ready timeout",
            Self::ShutdownTimeout => "shutdown timeout",
            Self::BadTraffic => "bad control traffic",
            Self::MemoryCeiling => "memory past the hard ceiling",
        })
    }
}

/// Why a worker was stopped, if the watcher asked it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopCause {
    /// The cluster is stopping.
    Stop,
    /// A newer generation replaced it (rolling restart).
    Replaced,
    /// The cluster was scaled down.
    ScaledDown,
    /// The worker asked for it (`cluster_worker::shutdown`).
    Requested,
    /// It was replaced for its age or memory (recycling).
    Recycled,
}

/// How one worker ended: returned by [`ClusterWatcher::stop`](crate::ClusterWatcher::stop) and
/// carried by [`Event::Exited`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerExit {
    /// Which worker.
    pub id: WorkerId,
    /// Its pid.
    pub pid: u32,
    /// How the process ended.
    pub status: ExitKind,
    /// Why the watcher stopped it, if it did; `None` means it exited on its own (a crash).
    pub stopped: Option<StopCause>,
    /// Why the watcher killed it, if it did.
    pub killed: Option<KillReason>,
}

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
    /// A stop gave up waiting for processes that did not end after `SIGKILL` (stuck in the
    /// kernel); they are reaped whenever they end.
    Abandoned {
        /// Their pids.
        pids: Vec<u32>,
    },
}
