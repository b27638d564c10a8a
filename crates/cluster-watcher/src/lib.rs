//! The supervisor side of a cluster: start worker processes, watch them, replace the ones
//! that crash or hang, restart them without dropping a connection, and talk to them.
//!
//! # A guided tour
//!
//! * [`WatcherConfig`] says what to run (program, arguments, environment, working directory)
//!   and sets the knobs, each with a documented default: shutdown timeout, ready timeout,
//!   heartbeat interval and timeout, respawn backoff, [`Balance`] mode.
//! * [`ClusterWatcher`] runs it: [`start`](ClusterWatcher::start) (returns once all are
//!   ready, or a [`StartError`] naming the worker and the cause),
//!   [`restart`](ClusterWatcher::restart) (rolling, readiness-gated),
//!   [`stop`](ClusterWatcher::stop) (graceful, then `SIGKILL`, every child reaped),
//!   [`add_worker`](ClusterWatcher::add_worker) / [`remove_worker`](ClusterWatcher::remove_worker).
//! * [`events`](ClusterWatcher::events) reports every [`Event`]: started, ready, killed (and
//!   why), exited ([`WorkerExit`]: status, stop cause, kill reason), respawning.
//! * [`messages`](ClusterWatcher::messages) yields [`WorkerMessage`]s, each able to
//!   [`reply`](WorkerMessage::reply) to its sender;
//!   [`send_to`](ClusterWatcher::send_to) and [`broadcast`](ClusterWatcher::broadcast) go the
//!   other way.
//! * Worker `tracing` events are re-emitted through this process's subscriber with target
//!   `worker` and fields `worker` (slot) and `pid`; worker stdout and stderr are inherited.
//!
//! # Supervision rules
//!
//! * A worker that exits while the cluster runs is respawned at once. A slot whose workers
//!   keep ending themselves within [`WatcherConfig::min_uptime`] (1 s) of starting waits
//!   `backoff_initial` before the second respawn, then twice that for each further one, up
//!   to `backoff_max`; the other slots keep serving. There is never a hot respawn loop.
//!   Workers killed from outside (`SIGKILL`) or that ran longer are replaced at once.
//! * A ready worker silent for `heartbeat_timeout` is killed and replaced; so is a new one
//!   not ready within `ready_timeout`.
//! * Messages and log events a worker sent before exiting are read before its exit is
//!   reported.
//! * In [`Balance::RoundRobin`] the watcher accepts and transfers each connection to the next
//!   ready worker; a failed transfer goes to the next worker, never dropped. A worker with
//!   about 20 connections queued (it fell behind, or stopped inside its heartbeat timeout)
//!   is passed over until it catches up, and the connections still queued for a worker
//!   that exits (a crash, a kill) go to the other workers: while the cluster runs, only the
//!   connections a worker had taken are lost with it.

#![forbid(unsafe_code)]

mod balancer;
mod config;
mod error;
mod event;
mod watcher;

pub use crate::{
    config::WatcherConfig,
    error::{SendError, StartError},
    event::{Event, ExitKind, KillReason, StopCause, WorkerExit, WorkerId},
    watcher::{ClusterWatcher, WorkerInfo, WorkerMessage},
};

pub use cluster_ipc::protocol::Balance;
