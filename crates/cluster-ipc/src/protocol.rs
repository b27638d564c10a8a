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
//! named here, written and read only through [`WorkerBootstrap`].

use std::os::fd::RawFd;
use std::time::Duration;

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
/// `1`: every socket on the client pipe is a connected stream socket, non-blocking, as the
/// watcher vouches (it accepted them so, or checked them); `0` or unset: check each.
pub const ENV_CLIENTS_VOUCHED: &str = "CLUSTER_CLIENTS_VOUCHED";

/// How often a worker sends a heartbeat unless told otherwise.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// The descriptor numbers of a worker's four inherited sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerFds {
    /// [`WatcherToWorker`] / [`WorkerToWatcher`].
    pub control: RawFd,
    /// [`LogRecord`]s.
    pub log: RawFd,
    /// Server-socket requests.
    pub listen: RawFd,
    /// Client sockets with [`ClientMeta`].
    pub clients: RawFd,
}

/// Everything a watcher tells a worker at spawn, through its environment: the worker's
/// bootstrap contract, written by [`to_env`](Self::to_env) on one side and read by
/// [`from_env`](Self::from_env) on the other, so both always agree.
///
/// ```
/// use std::time::Duration;
/// use cluster_ipc::protocol::{Balance, WorkerBootstrap, WorkerFds};
/// let sent = WorkerBootstrap {
///     id: 2,
///     generation: 5,
///     fds: WorkerFds { control: 3, log: 4, listen: 5, clients: 6 },
///     heartbeat: Duration::from_millis(500),
///     balance: Balance::RoundRobin,
///     clients_vouched: true,
/// };
/// let env = sent.to_env();
/// let read = WorkerBootstrap::from_vars(|name| {
///     env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())
/// });
/// assert_eq!(read?, Some(sent));
/// # Ok::<(), cluster_ipc::protocol::BootstrapError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerBootstrap {
    /// Slot number, from 1 ([`ENV_WORKER_ID`]).
    pub id: u32,
    /// Start count of the slot, from 1 ([`ENV_WORKER_GENERATION`]).
    pub generation: u32,
    /// The inherited sockets ([`ENV_WORKER_FDS`]).
    pub fds: WorkerFds,
    /// Heartbeat interval ([`ENV_HEARTBEAT_MS`]; default [`DEFAULT_HEARTBEAT_INTERVAL`]).
    pub heartbeat: Duration,
    /// Balance mode ([`ENV_BALANCE`]; default [`Balance::Shared`]).
    pub balance: Balance,
    /// The watcher vouches for the kind and `O_NONBLOCK` of every socket it sends, so the
    /// worker takes them unchecked ([`ENV_CLIENTS_VOUCHED`]; default `false`: a watcher
    /// that does not say so gets each one checked).
    pub clients_vouched: bool,
}

/// Why a worker's environment is not a valid [`WorkerBootstrap`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BootstrapError {
    /// A variable the contract requires is not set.
    #[error("{0} is not set")]
    Missing(&'static str),
    /// A variable holds a value outside the contract.
    #[error("{name} has an invalid value {value:?}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// What it holds.
        value: String,
    },
}

impl WorkerBootstrap {
    /// The environment variables to set on the worker's command.
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        let WorkerFds {
            control,
            log,
            listen,
            clients,
        } = self.fds;
        vec![
            (ENV_WORKER_ID, self.id.to_string()),
            (ENV_WORKER_GENERATION, self.generation.to_string()),
            (
                ENV_WORKER_FDS,
                format!("{control},{log},{listen},{clients}"),
            ),
            (ENV_HEARTBEAT_MS, self.heartbeat.as_millis().to_string()),
            (ENV_BALANCE, self.balance.as_str().to_owned()),
            (
                ENV_CLIENTS_VOUCHED,
                u8::from(self.clients_vouched).to_string(),
            ),
        ]
    }

    /// Reads this process's environment: `Ok(None)` when it was not started by a watcher
    /// ([`ENV_WORKER_ID`] unset).
    ///
    /// # Errors
    /// [`BootstrapError`] when a variable is missing or invalid: a worker never guesses.
    pub fn from_env() -> Result<Option<Self>, BootstrapError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) over any source of variables.
    ///
    /// # Errors
    /// As [`from_env`](Self::from_env).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, BootstrapError> {
        let Some(id) = get(ENV_WORKER_ID) else {
            return Ok(None);
        };
        let invalid = |name: &'static str, value: &str| BootstrapError::Invalid {
            name,
            value: value.to_owned(),
        };
        let id = id
            .parse()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| invalid(ENV_WORKER_ID, &id))?;
        let generation = match get(ENV_WORKER_GENERATION) {
            Some(g) => g
                .parse()
                .ok()
                .filter(|g| *g > 0)
                .ok_or_else(|| invalid(ENV_WORKER_GENERATION, &g))?,
            None => 1,
        };
        let fds_text = get(ENV_WORKER_FDS).ok_or(BootstrapError::Missing(ENV_WORKER_FDS))?;
        let numbers: Vec<RawFd> = fds_text
            .split(',')
            .map(|n| n.parse().ok().filter(|n: &RawFd| *n >= 0))
            .collect::<Option<_>>()
            .ok_or_else(|| invalid(ENV_WORKER_FDS, &fds_text))?;
        let [control, log, listen, clients] = numbers[..] else {
            return Err(invalid(ENV_WORKER_FDS, &fds_text));
        };
        let heartbeat = match get(ENV_HEARTBEAT_MS) {
            Some(ms) => ms
                .parse()
                .ok()
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis)
                .ok_or_else(|| invalid(ENV_HEARTBEAT_MS, &ms))?,
            None => DEFAULT_HEARTBEAT_INTERVAL,
        };
        let balance = match get(ENV_BALANCE) {
            Some(b) => Balance::parse(&b).ok_or_else(|| invalid(ENV_BALANCE, &b))?,
            None => Balance::default(),
        };
        let clients_vouched = match get(ENV_CLIENTS_VOUCHED).as_deref() {
            None | Some("0") => false,
            Some("1") => true,
            Some(other) => return Err(invalid(ENV_CLIENTS_VOUCHED, other)),
        };
        Ok(Some(Self {
            id,
            generation,
            fds: WorkerFds {
                control,
                log,
                listen,
                clients,
            },
            heartbeat,
            balance,
            clients_vouched,
        }))
    }
}

/// How client connections reach workers.
///
/// What each mode means for the watcher and for a worker is answered in one place,
/// [`Balance::traits`]: adding a mode is a variant here, its line there and in
/// [`Balance::as_str`] (the compiler asks for both), its place in [`Balance::ALL`] (which the
/// command line's list and error messages are built from), and (if it picks workers by a
/// new rule) one module of `cluster-watcher`'s `balance/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Balance {
    /// Every worker accepts on one shared socket
    ///
    /// Every worker accepts on a duplicate of one listening socket owned by the watcher; the
    /// kernel hands each connection to an idle worker. Costs nothing on the request path.
    #[default]
    Shared,
    /// The watcher accepts and hands each connection to the next worker
    ///
    /// The watcher accepts and sends each connection to the next ready worker in turn (Node's
    /// default on Linux): even spread, at the cost of one descriptor transfer per connection.
    RoundRobin,
    /// One SO_REUSEPORT socket per worker slot, held by the watcher; the kernel spreads
    /// connections evenly and slots without a ready worker are steered around
    ///
    /// Each worker accepts on its slot's socket; the sockets are all owned by the watcher,
    /// so a slot's queue survives its worker. Costs nothing on the request path.
    Reuseport,
    /// The watcher accepts and hands each connection to the worker with the fewest open
    /// connections (cluster-worker programs)
    ///
    /// As [`RoundRobin`](Self::RoundRobin), but each connection goes to the ready worker
    /// with the fewest open connections (ties in turn); workers report the connections they
    /// closed.
    LeastConn,
    /// The watcher accepts and hands every connection with the same key to the same slot
    /// (sticky sessions; cluster-worker programs)
    ///
    /// The key is the client's address or a header, cookie or query parameter of its first
    /// request (`hash=ip|header:NAME|cookie:NAME|query:NAME` on the command line), hashed
    /// over the live slots by rendezvous hashing: a slot's replacement keeps its keys, and a
    /// scale change moves only the keys of the slots that came or went.
    Hash,
}

/// What a [`Balance`] mode means, for the watcher and for its workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BalanceTraits {
    /// The watcher accepts and hands each connection to a worker; workers get the
    /// listening address, never the socket.
    pub watcher_accepts: bool,
    /// One `SO_REUSEPORT` socket per slot, held by the watcher and steered around slots
    /// without a ready worker; a slot is drained before its worker stops.
    pub socket_per_slot: bool,
    /// Workers report each connection they close, and the watcher hands the next one to
    /// the worker with the fewest open.
    pub least_loaded: bool,
    /// The watcher hands every connection with the same key to the same slot.
    pub hashed: bool,
}

impl Balance {
    /// Every mode, in the order the command line lists them.
    pub const ALL: [Self; 5] = [
        Self::Shared,
        Self::RoundRobin,
        Self::Reuseport,
        Self::LeastConn,
        Self::Hash,
    ];

    /// What this mode means: the one `match` every question about a mode is answered by.
    pub const fn traits(self) -> BalanceTraits {
        let (watcher_accepts, socket_per_slot, least_loaded, hashed) = match self {
            Self::Shared => (false, false, false, false),
            Self::RoundRobin => (true, false, false, false),
            Self::Reuseport => (false, true, false, false),
            Self::LeastConn => (true, false, true, false),
            Self::Hash => (true, false, false, true),
        };
        BalanceTraits {
            watcher_accepts,
            socket_per_slot,
            least_loaded,
            hashed,
        }
    }

    /// The name used on the command line and in [`ENV_BALANCE`].
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shared => "shared",
            Self::RoundRobin => "round-robin",
            Self::Reuseport => "reuseport",
            Self::LeastConn => "least-conn",
            Self::Hash => "hash",
        }
    }

    /// Parses [`as_str`](Self::as_str)'s names.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|mode| mode.as_str() == name)
    }

    /// Whether the watcher accepts and hands each connection to a worker (round-robin,
    /// least-conn, hash), rather than workers accepting on sockets of their own.
    pub fn hands_off(self) -> bool {
        self.traits().watcher_accepts
    }
}

/// What the watcher tells a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WatcherToWorker {
    /// Finish in-flight work and exit.
    Stop,
    /// An application message (postcard-encoded by the sender).
    Message(Vec<u8>),
    /// Finish in-flight work and exit, saying goodbye to long-lived connections (HTTP/2
    /// GOAWAY, WebSocket Close 1012, the end of event streams) spread evenly over `spread`,
    /// and cutting whatever is left at `timeout`.
    Drain {
        /// The window the goodbyes are spread over (zero: all at once).
        spread: Duration,
        /// When whatever is left is cut, counted from now.
        timeout: Duration,
    },
    /// Hand back up to `count` keep-alive connections at their next idle moment (never with
    /// a request in flight) and keep serving: the watcher gives them to a worker that has
    /// too few (live rebalancing after a scale-up or a respawn).
    Rebalance {
        /// How many connections, at most.
        count: u32,
    },
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
    /// Connections its listeners accepted so far (sent with a heartbeat when it changed):
    /// for status, metrics and `--max-requests`.
    Accepted(u64),
    /// Connections handed to this worker that it closed (or handed back) so far, sent soon
    /// after each close in least-conn mode: the watcher's count of its open connections.
    Closed(u64),
    /// Connections open in this worker now (sent with a heartbeat when it changed, and while
    /// it drains): for status and metrics.
    Open(u64),
    /// The application's metrics, in the OpenMetrics text format (sent with a heartbeat
    /// when they changed, and once more after the last request of a draining worker): the
    /// watcher merges them across workers.
    Metrics(String),
    /// HTTP requests the serve loops answered so far (sent with a heartbeat when it changed;
    /// only by workers that serve through them): `cluster top`'s requests a second.
    Requests(u64),
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

#[cfg(test)]
mod tests {
    use super::{BootstrapError, ENV_CLIENTS_VOUCHED, WorkerBootstrap};

    fn with_vouched(value: Option<&str>) -> Result<Option<WorkerBootstrap>, BootstrapError> {
        WorkerBootstrap::from_vars(|name| match name {
            "CLUSTER_WORKER_ID" => Some("1".into()),
            "CLUSTER_WORKER_FDS" => Some("3,4,5,6".into()),
            ENV_CLIENTS_VOUCHED => value.map(str::to_owned),
            _ => None,
        })
    }

    #[test]
    fn a_watcher_that_does_not_vouch_for_its_sockets_gets_them_checked() {
        let vouched = |value| with_vouched(value).unwrap().unwrap().clients_vouched;
        assert!(!vouched(None), "an older watcher says nothing");
        assert!(!vouched(Some("0")));
        assert!(vouched(Some("1")));
        assert!(matches!(
            with_vouched(Some("yes")),
            Err(BootstrapError::Invalid {
                name: ENV_CLIENTS_VOUCHED,
                ..
            })
        ));
    }
}
