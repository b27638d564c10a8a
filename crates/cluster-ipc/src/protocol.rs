//! The messages between a cluster watcher and its workers, apart from any I/O.
//!
//! A worker is spawned with four inherited `SOCK_SEQPACKET` sockets, one per kind of
//! traffic, so that a slow reader of one never stalls another:
//!
//! | socket | direction | carries |
//! |---|---|---|
//! | control | both | [`WatcherToWorker`] / [`WorkerToWatcher`] |
//! | log | worker → watcher | [`LogRecord`] |
//! | listen | worker asks, watcher answers | server-socket requests ([`ServerSocketProvider`](crate::ServerSocketProvider)) |
//! | clients | watcher → worker | accepted client sockets with [`ClientMeta`] (round-robin mode) |
//!
//! Their descriptor numbers and the worker's identity travel in the environment variables
//! named here.

use serde::{Deserialize, Serialize};

use crate::ListenAddress;

/// Slot number of the worker (stable across restarts of that slot), starting at 1.
pub const ENV_WORKER_ID: &str = "CLUSTER_WORKER_ID";
/// How many times the slot has been started, starting at 1.
pub const ENV_WORKER_GENERATION: &str = "CLUSTER_WORKER_GENERATION";
/// `control,log,listen,clients` descriptor numbers.
pub const ENV_WORKER_FDS: &str = "CLUSTER_WORKER_FDS";
/// How often the worker must send a heartbeat, in milliseconds.
pub const ENV_HEARTBEAT_MS: &str = "CLUSTER_HEARTBEAT_MS";
/// `shared` or `round-robin`.
pub const ENV_BALANCE: &str = "CLUSTER_BALANCE";

/// How client connections reach workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Balance {
    /// Every worker accepts on a duplicate of one listening socket owned by the watcher; the
    /// kernel hands each connection to an idle worker. Costs nothing on the request path.
    #[default]
    Shared,
    /// The watcher accepts and sends each connection to the next ready worker in turn (Node's
    /// default on Linux): even spread, at the cost of one descriptor transfer per connection.
    RoundRobin,
}

impl Balance {
    /// The name used on the command line and in [`ENV_BALANCE`].
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shared => "shared",
            Self::RoundRobin => "round-robin",
        }
    }

    /// Parses [`as_str`](Self::as_str)'s names.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "shared" => Some(Self::Shared),
            "round-robin" => Some(Self::RoundRobin),
            _ => None,
        }
    }
}

/// What the watcher tells a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WatcherToWorker {
    /// Finish in-flight work and exit.
    Stop,
    /// An application message (postcard-encoded by the sender).
    Message(Vec<u8>),
}

/// What a worker tells the watcher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorkerToWatcher {
    /// The worker can serve.
    Ready,
    /// Sent from the worker's runtime at the heartbeat interval: a blocked runtime stops it.
    Heartbeat,
    /// The worker asks to be stopped gracefully; not a crash.
    Shutdown,
    /// An application message (postcard-encoded by the sender).
    Message(Vec<u8>),
}

/// A log event forwarded from a worker's `tracing` subscriber.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// 0 = trace, 1 = debug, 2 = info, 3 = warn, 4 = error.
    pub level: u8,
    /// The event's target (usually its module path).
    pub target: String,
    /// The `message` field.
    pub message: String,
    /// Every other field, formatted.
    pub fields: Vec<(String, String)>,
}

/// Sent with each client socket in round-robin mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientMeta {
    /// The listening address (as the worker asked for it) that accepted the connection.
    pub listener: ListenAddress,
    /// The client's address, as `accept` returned it (saves the worker a `getpeername`).
    pub peer: Option<std::net::SocketAddr>,
}
