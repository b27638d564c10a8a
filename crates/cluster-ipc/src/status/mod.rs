//! What a cluster's state looks like from outside: the snapshot a watcher takes of its
//! workers ([`ClusterStatus`]) and how a worker ended ([`WorkerExit`]).
//!
//! These types cross process boundaries (the control socket answers `status` with a
//! [`ClusterStatus`]), so they live here, below both the watcher that builds them and the
//! clients that read them; `cluster-watcher` re-exports them under the same names. One
//! definition serves the JSON of `cluster status --json`, the text table and the metrics.
//! Times serialize as seconds (fractions allowed), exit statuses and reasons as text.

mod exit;
mod serde_time;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use self::exit::{ExitKind, KillReason, StopCause, WorkerExit, WorkerId};
use self::serde_time::{optional_seconds, progress, seconds};

/// What the process serving a cluster says of itself in a status: filled in by whoever
/// answers the control socket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct About {
    /// The cluster's name.
    pub name: String,
    /// The watcher's pid.
    pub pid: u32,
    /// The balance mode, by name.
    pub balance: String,
    /// Whether workers are programs given listeners (`--listen`).
    pub program_mode: bool,
    /// The listening addresses, as bound.
    pub listeners: Vec<String>,
    /// How long the watcher has run.
    #[serde(with = "seconds")]
    pub uptime: Duration,
}

impl About {
    /// An `About` with every field given.
    pub fn new(
        name: String,
        pid: u32,
        balance: String,
        program_mode: bool,
        listeners: Vec<String>,
        uptime: Duration,
    ) -> Self {
        Self {
            name,
            pid,
            balance,
            program_mode,
            listeners,
            uptime,
        }
    }
}

/// The whole cluster at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ClusterStatus {
    /// Who answers, when asked over the control socket.
    #[serde(flatten, default)]
    pub about: Option<About>,
    /// Whether the cluster runs (started and not stopped).
    pub running: bool,
    /// Slots whose current worker is ready (as [`ready_workers`](Self::ready_workers)).
    #[serde(rename = "ready_workers", default)]
    pub ready: usize,
    /// Slots the cluster is meant to run (as [`wanted_workers`](Self::wanted_workers)).
    #[serde(rename = "wanted_workers", default)]
    pub wanted: usize,
    /// Every slot that is wanted or still has a process, in slot order.
    pub slots: Vec<SlotStatus>,
    /// `(replaced so far, slots in the round)` while a rolling restart runs.
    #[serde(with = "progress")]
    pub rolling_restart: Option<(usize, usize)>,
    /// Rolling restarts that replaced every worker.
    pub rolling_restarts_completed: u64,
    /// Rolling restarts in which a replacement failed (its old worker was kept).
    pub rolling_restarts_failed: u64,
    /// The configuration workers run, and the last reload that failed.
    #[serde(default)]
    pub configuration: ConfigurationStatus,
    /// Log lines the cluster dropped because its log output did not keep up (counted,
    /// never blocking supervision), when the program serving it counts them.
    #[serde(default)]
    pub log_lines_dropped: Option<u64>,
}

/// Which configuration a cluster runs: where it came from, its generation (1 at start, one
/// more at each reload), when it was loaded, what its reload changed; and the last reload
/// that was rolled back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ConfigurationStatus {
    /// The file it was read from, if any (`cluster -c FILE`).
    pub source: Option<String>,
    /// Its generation.
    pub generation: u64,
    /// Time since it was loaded (the watcher's start, or the reload that brought it).
    #[serde(with = "seconds")]
    pub age: Duration,
    /// The keys its reload changed (empty for the first).
    pub changed: Vec<String>,
    /// The generation being tried while a reload is on probation.
    pub reloading: Option<u64>,
    /// The last reload that was rolled back, while no later one succeeded.
    pub failed: Option<FailedReload>,
}

/// A reload that was rolled back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FailedReload {
    /// The generation it had.
    pub generation: u64,
    /// The keys it changed.
    pub changed: Vec<String>,
    /// Why it was rolled back.
    pub reason: String,
    /// Time since it was rolled back.
    #[serde(with = "seconds")]
    pub age: Duration,
}

impl FailedReload {
    /// A failed reload with every field given.
    pub fn new(generation: u64, changed: Vec<String>, reason: String, age: Duration) -> Self {
        Self {
            generation,
            changed,
            reason,
            age,
        }
    }
}

impl ClusterStatus {
    /// A status of these slots; the counts are worked out here.
    pub fn new(running: bool, slots: Vec<SlotStatus>) -> Self {
        let mut status = Self {
            running,
            slots,
            ..Self::default()
        };
        status.ready = status.ready_workers();
        status.wanted = status.wanted_workers();
        status
    }

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

    /// Every live worker, with its slot.
    pub fn workers(&self) -> impl Iterator<Item = &WorkerStatus> {
        self.slots.iter().flat_map(|s| &s.workers)
    }
}

/// One slot: its processes (usually one; two during its rolling restart or while an old
/// one drains), counters that survive its restarts, and its last exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    #[serde(with = "optional_seconds")]
    pub backing_off: Option<Duration>,
    /// Why its workers were replaced, by cause.
    pub restarts: RestartCounts,
    /// How its last process ended.
    pub last_exit: Option<WorkerExit>,
    /// Reuseport: connections waiting in the accept queues of the slot's sockets (one that
    /// stays up while the worker is ready means the worker is not accepting).
    pub queued: Option<u32>,
}

impl SlotStatus {
    /// A slot's status with no balancing figures.
    pub fn new(
        slot: u32,
        wanted: bool,
        generation: u32,
        workers: Vec<WorkerStatus>,
        backing_off: Option<Duration>,
        restarts: RestartCounts,
        last_exit: Option<WorkerExit>,
    ) -> Self {
        Self {
            slot,
            wanted,
            generation,
            workers,
            backing_off,
            restarts,
            last_exit,
            queued: None,
        }
    }
}

/// Replacements of one slot's worker, by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WorkerStatus {
    /// Which worker.
    #[serde(flatten)]
    pub id: WorkerId,
    /// Its pid (0 while it is being spawned).
    pub pid: u32,
    /// Where it is in its life.
    #[serde(rename = "state")]
    pub phase: WorkerPhase,
    /// Whether it is the slot's worker (false: a replacement starting, or one draining).
    pub current: bool,
    /// Time since it was started.
    #[serde(with = "seconds")]
    pub uptime: Duration,
    /// Time since its last heartbeat (or ready report).
    #[serde(with = "optional_seconds")]
    pub heartbeat_age: Option<Duration>,
    /// Connections it accepted (reported by `cluster-worker` programs with heartbeats).
    pub accepted: Option<u64>,
    /// HTTP requests it answered (reported by `cluster-worker` programs that serve through
    /// its serve loops).
    #[serde(default)]
    pub requests: Option<u64>,
    /// Least-conn: connections handed to it and not yet closed, as the watcher counts them.
    pub open_connections: Option<u64>,
    /// Resident memory of its whole process tree, in bytes, when measured.
    #[serde(rename = "rss_bytes")]
    pub rss: Option<u64>,
    /// CPU time of its whole process tree, when measured.
    #[serde(rename = "cpu_seconds", with = "optional_seconds")]
    pub cpu: Option<Duration>,
    /// The CPUs its main process may run on (`0-3`, `2`), when measured.
    #[serde(default)]
    pub cpus: Option<String>,
}

impl WorkerStatus {
    /// A worker's status with nothing measured yet.
    pub fn new(
        id: WorkerId,
        pid: u32,
        phase: WorkerPhase,
        current: bool,
        uptime: Duration,
    ) -> Self {
        Self {
            id,
            pid,
            phase,
            current,
            uptime,
            heartbeat_age: None,
            accepted: None,
            requests: None,
            open_connections: None,
            rss: None,
            cpu: None,
            cpus: None,
        }
    }
}

/// Where a worker process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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
