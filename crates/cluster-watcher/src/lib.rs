//! The supervisor side of a cluster: start worker processes, watch them, replace the ones
//! that crash or hang, restart them without dropping a connection, and talk to them.
//!
//! # A guided tour
//!
//! The crate is split as quinn is: a policy without I/O, and one driver that does the I/O.
//!
//! * [`WatcherConfig`] says what to run (program, arguments, environment, working directory)
//!   and sets the knobs, each with a documented default: shutdown timeout, ready timeout,
//!   heartbeat interval and timeout, respawn backoff, `min_uptime`, restart parallelism,
//!   [`Balance`] mode. [`WatcherConfig::validate`] checks them against each other.
//! * [`ClusterWatcher`] is the handle: [`start`](ClusterWatcher::start) (returns once all are
//!   ready, or a [`StartError`] naming the worker and the cause),
//!   [`restart`](ClusterWatcher::restart) (rolling, readiness-gated, coalesced),
//!   [`scale`](ClusterWatcher::scale), [`add_worker`](ClusterWatcher::add_worker) /
//!   [`remove_worker`](ClusterWatcher::remove_worker), [`stop`](ClusterWatcher::stop)
//!   (graceful, then `SIGKILL`, every child reaped), [`status`](ClusterWatcher::status)
//!   (a [`ClusterStatus`] per slot: pids, phases, restarts by cause, last exit).
//! * Inside, the handle asks **one driver task** (`driver/`) that owns every worker process.
//!   The driver feeds the **supervisor core** (`core/`: slots, generations, phases, backoff,
//!   rolling restarts, recycling, scaling, stop, reuseport drains; no tokio, no processes,
//!   no clock) its inputs with `now`, sleeps until the core's next timer (every timer is one
//!   entry of one table, `core/timers.rs`), and applies the actions the core returns: spawn,
//!   ask to stop, kill (`SIGKILL` to the worker's process group, the only kill path),
//!   measure what the core asks about (memory, accept queues, the shared sockets) and
//!   report it, report an event, answer a caller. Every rule is unit-tested with a fake
//!   clock (`core/tests/`).
//! * [`events`](ClusterWatcher::events) reports every [`Event`]: started, ready, killed (and
//!   why), exited ([`WorkerExit`]: status, stop cause, kill reason), respawning, rolling
//!   restarts, a stall of the watcher itself.
//! * [`messages`](ClusterWatcher::messages) yields [`WorkerMessage`]s (bounded; the stream
//!   ends after `stop`), each able to [`reply`](WorkerMessage::reply) to its sender;
//!   [`send_to`](ClusterWatcher::send_to) and [`broadcast`](ClusterWatcher::broadcast) go the
//!   other way.
//! * Worker `tracing` events are re-emitted through this process's subscriber with target
//!   `worker` and fields `worker` (slot) and `pid`, line breaks escaped and length capped;
//!   so is each line workers write to stdout and stderr (field `stream`), and [`read_lines`]
//!   does the same for any child's output.
//! * How connections reach workers is `balance/`: in [`Balance::RoundRobin`] and
//!   [`Balance::LeastConn`] the balancer accepts and hands connections to workers directly,
//!   never through the driver; in [`Balance::Reuseport`] each slot has a socket of its own,
//!   steered around slots that cannot take connections.
//! * [`control`] answers the world: the control socket ([`ClusterWatcher::serve_control`],
//!   the protocol of `cluster_ipc::control`), `/metrics` and the health probes
//!   ([`ClusterWatcher::serve_metrics`]); the status they show is one [`ClusterStatus`],
//!   serialized.
//! * [`SuccessorLink`] and [`PredecessorLink`] (`upgrade.rs`) upgrade the watcher itself:
//!   the old one hands its listening sockets and, later, its connections to a new one.
//!
//! # Extending it
//!
//! * **A control command** is one variant of `cluster_ipc::control::Request` (and, if it
//!   answers something new, of `Response`). The compiler then walks you through the rest:
//!   the control server's `answer` must handle it (here, or as a [`ProgramRequest`] for the
//!   embedding program), and the `cluster` binary's client must build and print it.
//! * **A balance mode** is one variant of [`Balance`] and its line in `Balance::traits` (the
//!   one `match` every question about a mode is answered by, on both sides) and in
//!   `Balance::as_str` (the compiler asks for both), plus its place in `Balance::ALL`, the
//!   list the command line shows and checks against; if it picks
//!   workers by a rule of its own, that rule is one more arm of `balance/pick.rs`'s `Rule`,
//!   a pure function with its own tests.
//! * **A timer** is one variant of the core's `Timer` and one arm of `Supervisor::expire`;
//!   **a measurement** the driver takes is one `Action` it applies and one input of the
//!   core it reports to.

//! # Supervision rules
//!
//! * A worker that exits while the cluster runs is respawned at once. A slot whose workers
//!   keep ending within [`WatcherConfig::min_uptime`] (1 s) of starting (a crash, a kill
//!   by the watcher, their own request, a `SIGKILL` from outside before they served) waits
//!   `backoff_initial` before the second respawn, then twice that for each further one, up
//!   to `backoff_max`; the other slots keep serving. Stops the watcher itself asked for
//!   (stop, restart, scale-down) never count, and neither does a worker that had served
//!   (ready, and for a `cluster-worker` program at least one connection accepted) and was
//!   then ended by a signal from outside (`SIGKILL`, `SIGTERM`, `SIGINT`, `SIGQUIT`,
//!   `SIGHUP` that neither it nor the watcher sent: the OOM killer, an operator, a chaos
//!   test): that is not a crash loop, and it is replaced at once. The backoff never leaves
//!   the cluster with no ready worker while a slot whose last worker had been ready and
//!   was killed from outside could serve: such a slot starts at once then.
//! * A worker's uptime ends when its main process exits, and from then on it serves no
//!   more (a program that daemonizes is not ready because its daemon holds the socket).
//!   Whatever a worker started is ended with it: its process group, and daemons that left
//!   it (each worker runs in a cgroup of its own where the watcher can make one; otherwise
//!   its processes are found by the `CLUSTER_WORKER_MARK` in their environment).
//! * A stop is prompt whatever state a worker is in: one that never became ready (a slow
//!   start, a stuck import) is killed a second after it was asked to stop.
//! * Memory: a worker over `max_memory` is recycled, past 1.5 times it killed; a slot whose
//!   workers are over it within 10 s of starting, time after time, waits longer each time
//!   (as the respawn backoff), and at the third says the limit cannot be met
//!   ([`Event::MemoryLimitUnmet`]).
//! * A ready worker silent for `heartbeat_timeout` is killed and replaced; so is a new one
//!   not ready within `ready_timeout`. Liveness is judged on what workers sent: when the
//!   watcher itself did not run for a while (`SIGSTOP`, a paused VM, a starved thread), its
//!   deadlines move by that gap ([`Event::WatcherStalled`]) instead of expiring.
//! * Messages and log events a worker sent before exiting are read before its exit is
//!   reported. Everything a worker can send is bounded before it reaches the driver.
//! * In [`Balance::RoundRobin`] the watcher accepts and transfers each connection to the next
//!   ready worker; a failed transfer goes to the next worker, never dropped. A worker with
//!   about 20 connections queued (it fell behind, or stopped inside its heartbeat timeout)
//!   is passed over until it catches up, and the connections still queued for a worker
//!   that exits (a crash, a kill) go to the other workers: while the cluster runs, only the
//!   connections a worker had taken are lost with it. Workers get the listening address,
//!   never the listening socket, so none can break the socket the watcher accepts on.
//! * In [`Balance::Shared`] every worker accepts on a duplicate of the watcher's socket (one
//!   open file description): a worker that calls `shutdown` on its copy, or clears
//!   `O_NONBLOCK`, changes it for every holder. The watcher checks its sockets every few
//!   seconds, restores `O_NONBLOCK` (for `cluster-worker` programs; programs given
//!   listeners get them blocking, as systemd gives them, and may set the flag as they
//!   like), and rebinds a socket that stopped listening.
//! * In [`Balance::LeastConn`] the hand-off goes to the ready worker with the fewest open
//!   connections (sent, less those it reported closed), ties in turn.
//! * In [`Balance::Reuseport`] each slot has a `SO_REUSEPORT` socket of its own for its
//!   whole life, shared by the slot's successive workers: a crash resets nothing queued.
//!   New connections go only to slots with a ready worker whose queue is not stuck; a worker
//!   to be stopped has its slot drained first (`core/reuseport.rs`), and a slot scaled away
//!   is closed only once its queue is empty.
//! * An upgrade ([`SuccessorLink`], [`PredecessorLink`]) hands the sockets to a new watcher,
//!   which starts its own workers; the old one stops its workers only once they are all
//!   ready, and passes on every connection it would have given them.

#![forbid(unsafe_code)]

mod appmetrics;
mod balance;
mod config;
pub mod control;
mod core;
mod driver;
mod error;
mod event;
mod handle;
mod messages;
mod notify;
mod sanitize;
mod shared;
mod task;
mod upgrade;

pub use crate::{
    balance::{HashKey, HashKeyError},
    config::{ConfigError, InheritedListener, WatcherConfig},
    control::{
        ControlServer, LogFeed, MetricsServer, ProgramRequest, Readiness, Reply,
        default_control_path, exposition,
    },
    driver::read_lines,
    error::{ReloadError, SendError, StartError},
    event::{Event, WorkerInfo},
    handle::ClusterWatcher,
    messages::WorkerMessage,
    upgrade::{
        ENV_UPGRADE, HandedOver, PredecessorLink, SuccessorEnds, SuccessorLink, UpgradeError,
    },
};

pub use cluster_ipc::protocol::Balance;
pub use cluster_ipc::status::{
    About, ClusterStatus, ConfigurationStatus, ExitKind, FailedReload, KillReason, RestartCounts,
    SlotStatus, StopCause, WorkerExit, WorkerId, WorkerPhase, WorkerStatus,
};
pub use fdpass::Credentials;
