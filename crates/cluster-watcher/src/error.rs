use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::{ExitKind, WorkerId};

/// Why workers could not be started (or, in a rolling restart, replaced).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The program could not be executed (not found, not executable, ...).
    #[error("cannot run {}: {source}", program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A worker exited before reporting ready.
    #[error("worker {id} (pid {pid}) exited with {status} before it was ready")]
    ExitedBeforeReady {
        /// Which worker.
        id: WorkerId,
        /// Its pid.
        pid: u32,
        /// How it ended.
        status: ExitKind,
    },
    /// A worker did not report ready in time and was killed.
    #[error("worker {id} (pid {pid}) was not ready within {timeout:?}")]
    NotReady {
        /// Which worker.
        id: WorkerId,
        /// Its pid.
        pid: u32,
        /// The ready timeout.
        timeout: Duration,
    },
    /// A worker of a reloaded configuration ended on its own within `min_uptime` of
    /// becoming ready.
    #[error("worker {id} (pid {pid}) exited with {status} {:.1} s after it was ready (within --min-uptime)", after.as_secs_f64())]
    EndedAfterReady {
        /// Which worker.
        id: WorkerId,
        /// Its pid.
        pid: u32,
        /// How it ended.
        status: ExitKind,
        /// How long after it became ready.
        after: Duration,
    },
    /// Another reload is on probation.
    #[error("a reload is already under way")]
    ReloadUnderWay,
    /// `start` was given zero workers.
    #[error("the number of workers must be at least 1")]
    ZeroWorkers,
    /// The watcher is already running workers, or is stopping.
    #[error("the cluster is already started")]
    AlreadyStarted,
    /// The watcher is not running (never started, or stopped).
    #[error("the cluster is not running")]
    NotRunning,
    /// A listening socket could not be bound (program mode binds them at start).
    #[error("cannot listen")]
    Listen(#[from] cluster_ipc::ServerSocketError),
    /// Setting up the worker's sockets failed.
    #[error("cannot set up worker sockets")]
    Io(#[from] io::Error),
}

/// Why a message could not be delivered to a worker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// No live worker has that slot number.
    #[error("no worker {0}")]
    NoSuchWorker(u32),
    /// The message could not be encoded.
    #[error("cannot encode message")]
    Encode(#[source] postcard::Error),
    /// The worker's channel failed (it is exiting).
    #[error("worker channel failed")]
    Channel(#[from] cluster_ipc::ChannelError),
}

/// Why a [`reload`](crate::ClusterWatcher::reload) did not take.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The new configuration changes what the running watcher holds for its whole life (the
    /// balance mode, the listeners): it takes a new watcher (an upgrade).
    #[error("{what} cannot change in place: it takes a new watcher (an upgrade)")]
    NeedsUpgrade {
        /// The setting, by name.
        what: &'static str,
    },
    /// Nothing was changed: the cluster does not run, or another reload is under way.
    #[error("reload refused: {0}")]
    Refused(#[source] StartError),
    /// The new configuration failed and the last good one was brought back.
    #[error("rolled back to the last good configuration: {0}")]
    RolledBack(#[source] StartError),
}
