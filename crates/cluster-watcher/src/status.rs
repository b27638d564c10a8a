//! [`ClusterStatus`]: a snapshot of the cluster, as [`ClusterWatcher::status`] returns it.
//!
//! [`ClusterWatcher::status`]: crate::ClusterWatcher::status

use std::time::Duration;

use crate::{WorkerExit, WorkerId};

/// The whole cluster at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterStatus {
    /// Whether the cluster runs (started and not stopped).
    pub running: bool,
    /// Every slot that is wanted or still has a process, in slot order.
    pub slots: Vec<SlotStatus>,
    /// `(replaced so far, slots in the round)` while a rolling restart runs.
    pub rolling_restart: Option<(usize, usize)>,
    /// Rolling restarts that replaced every worker.
    pub rolling_restarts_completed: u64,
    /// Rolling restarts in which a replacement failed (its old worker was kept).
    pub rolling_restarts_failed: u64,
}

impl ClusterStatus {
    /// Slots whose current worker is ready.
    pub fn ready_workers(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| {
                s.workers
                    .iter()
                    .any(|w| w.current && w.phase == WorkerPhase::Ready)
            })
            .count()
    }

    /// Slots the cluster is meant to run.
    pub fn wanted_workers(&self) -> usize {
        self.slots.iter().filter(|s| s.wanted).count()
    }
}

/// One slot: its processes (usually one; two during its rolling restart or while an old
/// one drains), counters that survive its restarts, and its last exit.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SlotStatus {
    /// Slot number, from 1.
    pub slot: u32,
    /// Whether the cluster wants it (false: scaled away, its last process draining).
    pub wanted: bool,
    /// The latest generation started in it.
    pub generation: u32,
    /// Its live processes.
    pub workers: Vec<WorkerStatus>,
    /// Time left before the next start, while the slot backs off after early ends.
    pub backing_off: Option<Duration>,
    /// Why its workers were replaced, by cause.
    pub restarts: RestartCounts,
    /// How its last process ended.
    pub last_exit: Option<WorkerExit>,
    /// Reuseport: connections waiting in the accept queues of the slot's sockets (one that
    /// stays up while the worker is ready means the worker is not accepting).
    pub queued: Option<u32>,
}

/// Replacements of one slot's worker, by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestartCounts {
    /// It ended on its own, or was killed from outside, or could not be started.
    pub crashed: u64,
    /// Killed by the watcher: no heartbeat, or not ready in time.
    pub hung: u64,
    /// Replaced by a rolling restart.
    pub rolling: u64,
    /// It asked to be stopped (`cluster_worker::shutdown`).
    pub requested: u64,
    /// Replaced for its age or memory.
    pub recycled: u64,
}

/// One live process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStatus {
    /// Which worker.
    pub id: WorkerId,
    /// Its pid (0 while it is being spawned).
    pub pid: u32,
    /// Where it is in its life.
    pub phase: WorkerPhase,
    /// Whether it is the slot's worker (false: a replacement starting, or one draining).
    pub current: bool,
    /// Time since it was started.
    pub uptime: Duration,
    /// Time since its last heartbeat (or ready report).
    pub heartbeat_age: Option<Duration>,
    /// Connections it accepted (reported by `cluster-worker` programs with heartbeats).
    pub accepted: Option<u64>,
    /// Least-conn: connections handed to it and not yet closed, as the watcher counts them.
    pub open_connections: Option<u64>,
}

/// Where a worker process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerPhase {
    /// Started, not ready yet.
    Starting,
    /// Serving.
    Ready,
    /// Asked to stop, finishing its work.
    Stopping,
    /// Sent `SIGKILL`, not reaped yet.
    Killed,
}

impl WorkerPhase {
    /// Lower-case name, as shown by status tools.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Stopping => "stopping",
            Self::Killed => "killed",
        }
    }
}
