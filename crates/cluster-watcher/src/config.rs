//! [`WatcherConfig`]: what to run and the knobs, each with its documented default.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use cluster_ipc::ListenAddress;
use cluster_ipc::protocol::Balance;

use crate::balance::HashKey;

/// What the watcher runs and how it supervises it.
///
/// ```
/// use std::time::Duration;
/// let config = cluster_watcher::WatcherConfig::new("target/release/hello-http")
///     .arg("127.0.0.1:8080")
///     .balance(cluster_watcher::Balance::RoundRobin)
///     .shutdown_timeout(Duration::from_secs(5));
/// assert_eq!(config.heartbeat_timeout, Duration::from_secs(10));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct WatcherConfig {
    /// The worker program. Looked up at every spawn, so a rebuilt binary takes effect at the
    /// next (re)start.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Extra environment variables (the watcher's own environment is inherited).
    pub env: Vec<(OsString, OsString)>,
    /// Working directory (default: the watcher's).
    pub cwd: Option<PathBuf>,
    /// How connections reach workers (default [`Balance::Shared`]).
    pub balance: Balance,
    /// What [`Balance::Hash`] hashes connections by (default the client's address); with
    /// [`Balance::Reuseport`], `Some(HashKey::Ip)` steers every connection from one address
    /// to one slot (the kernel hashes it), for programs given listeners.
    pub hash_key: Option<HashKey>,
    /// How long a newly ready worker's share of new connections takes to ramp from a tenth
    /// to full (round-robin, least-conn, reuseport; default zero: full at once).
    pub slow_start: Duration,
    /// How long a stopping worker may take to finish in-flight work before `SIGKILL`
    /// (default 10 s): also the drain's hard cap, after which a `cluster-worker` program
    /// cuts its long-lived connections that are left (HAProxy's `hard-stop-after`).
    pub shutdown_timeout: Duration,
    /// The window a stopping `cluster-worker` program spreads its goodbyes to long-lived
    /// connections over (HTTP/2 GOAWAY, WebSocket Close 1012, the end of event streams),
    /// evenly, so their clients do not all reconnect in the same instant (HAProxy's
    /// `close-spread-time`): for restarts, scale-downs and recyclings; a stop of the cluster
    /// says them at once (default 0: at once).
    pub drain_spread: Duration,
    /// How long a new worker may take to report ready before it is killed (default 30 s).
    pub ready_timeout: Duration,
    /// How often workers send a heartbeat (default 1 s).
    pub heartbeat_interval: Duration,
    /// Silence after which a ready worker is considered hung, killed and replaced
    /// (default 10 s).
    pub heartbeat_timeout: Duration,
    /// Delay before the second respawn of a slot whose workers keep ending themselves within
    /// [`min_uptime`](Self::min_uptime) of starting (the first respawn is immediate); doubles
    /// with each further such crash (default 100 ms). Workers that ran longer, or were
    /// `SIGKILL`ed from outside, are replaced at once.
    pub backoff_initial: Duration,
    /// Ceiling of the respawn delay (default 10 s).
    pub backoff_max: Duration,
    /// A worker that ran at least this long did not crash at start-up: when it ends, it is
    /// replaced at once and its slot's backoff starts over (default 1 s, as PM2's
    /// `min_uptime`).
    pub min_uptime: Duration,
    /// Slots replaced at once during a rolling restart (default 1).
    pub restart_parallelism: usize,
    /// The cluster's name, as status and metrics show it (default `cluster`).
    pub name: String,
    /// Where this configuration was read from (a file's path), as status shows it (default:
    /// none).
    pub source: Option<String>,
    /// A worker whose process tree's RSS goes over this many bytes (plus its jitter) is
    /// recycled: replaced through the rolling-restart path, its replacement ready first. Past
    /// 1.5 times the limit it is killed. Sampled every second (default: none).
    pub max_memory: Option<u64>,
    /// A worker older than this (plus its jitter) is recycled (default: none).
    pub max_age: Option<Duration>,
    /// A `cluster-worker` program that accepted this many connections (plus up to a tenth,
    /// per worker) is recycled (default: none).
    pub max_requests: Option<u64>,
    /// The spread added to each worker's limits, different for each, so workers started
    /// together do not recycle together (default 0; the CLI makes it a tenth of the limit).
    pub recycle_jitter: Duration,
    /// Listening sockets handed to programs that do not link `cluster-worker`, as systemd
    /// does: descriptors 3, 4, … in this order, with `LISTEN_FDS`, `LISTEN_FDNAMES` and
    /// `LISTEN_PID`. Non-empty means *program mode*: workers get no cluster channel; they
    /// report readiness with `READY=1` on `NOTIFY_SOCKET` (or are ready after
    /// [`ready_after`](Self::ready_after)), liveness with `WATCHDOG=1` if they choose to, and
    /// are stopped with [`stop_signal`](Self::stop_signal) (default empty).
    pub listen: Vec<InheritedListener>,
    /// Program mode: the signal that asks a worker's process group to stop (default
    /// `SIGTERM`).
    pub stop_signal: i32,
    /// Program mode: a worker still running this long after its start counts as ready, if it
    /// has not sent `READY=1` before (default 1 s, as einhorn; `None`: wait for `READY=1`).
    pub ready_after: Option<Duration>,
    /// The user and group workers run as (the watcher must be root): supplementary groups
    /// cleared, `setgid`, `setuid` and `PR_SET_NO_NEW_PRIVS` before `exec`. They keep the
    /// sockets the watcher hands them, their output and (program mode) their notify socket;
    /// they cannot signal the watcher nor use its control socket (default: the watcher's
    /// own user).
    pub run_as: Option<fdpass::Credentials>,
    /// Program mode: give each worker a port of its own for its application metrics
    /// (`CLUSTER_METRICS_PORT`, `CLUSTER_METRICS_ADDR`), read and merged into the watcher's
    /// `/metrics` (default false; the CLI sets it with `--metrics`).
    pub app_metrics_ports: bool,
    /// Program mode: how often workers' metrics are read between scrapes, which bounds what
    /// a worker that crashes takes with it (default 5 s; `cluster-worker` programs report
    /// theirs with every heartbeat).
    pub metrics_interval: Duration,
    /// CPUs to pin workers to: slot `i`'s workers run on `cpus[(i - 1) % cpus.len()]` only,
    /// across restarts (default empty: not pinned).
    pub cpus: Vec<usize>,
}

/// A listening socket handed to every worker in program mode (see [`WatcherConfig::listen`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InheritedListener {
    /// Its name in `LISTEN_FDNAMES`.
    pub name: String,
    /// Where it listens.
    pub address: ListenAddress,
    /// Permission bits of a Unix socket file (default: as the umask leaves them).
    pub mode: Option<u32>,
}

impl WatcherConfig {
    /// A configuration running `program` with every default.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            balance: Balance::Shared,
            hash_key: None,
            slow_start: Duration::ZERO,
            shutdown_timeout: Duration::from_secs(10),
            drain_spread: Duration::ZERO,
            ready_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            min_uptime: Duration::from_secs(1),
            restart_parallelism: 1,
            name: "cluster".to_owned(),
            source: None,
            max_memory: None,
            max_age: None,
            max_requests: None,
            recycle_jitter: Duration::ZERO,
            listen: Vec::new(),
            stop_signal: 15,
            ready_after: Some(Duration::from_secs(1)),
            run_as: None,
            app_metrics_ports: false,
            metrics_interval: Duration::from_secs(5),
            cpus: Vec::new(),
        }
    }

    /// Adds an argument.
    #[must_use]
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments.
    #[must_use]
    pub fn args<I: IntoIterator<Item = A>, A: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Adds an environment variable.
    #[must_use]
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets the balance mode.
    #[must_use]
    pub fn balance(mut self, balance: Balance) -> Self {
        self.balance = balance;
        self
    }

    /// Sets what connections are hashed by ([`Balance::Hash`], or `hash=ip` in
    /// [`Balance::Reuseport`]).
    #[must_use]
    pub fn hash_key(mut self, key: HashKey) -> Self {
        self.hash_key = Some(key);
        self
    }

    /// The key connections are hashed by, `None` when they are not.
    pub fn sticky_key(&self) -> Option<HashKey> {
        match self.balance {
            Balance::Hash => Some(self.hash_key.clone().unwrap_or_default()),
            Balance::Reuseport => self.hash_key.clone(),
            _ => None,
        }
    }

    /// The balance mode as an operator writes it: `round-robin`, `hash=cookie:sid`,
    /// `reuseport hash=ip`.
    pub fn balance_description(&self) -> String {
        match (self.balance, self.sticky_key()) {
            (Balance::Hash, Some(key)) => format!("hash={key}"),
            (balance, Some(key)) => format!("{} hash={key}", balance.as_str()),
            (balance, None) => balance.as_str().to_owned(),
        }
    }

    /// Sets the shutdown timeout.
    #[must_use]
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Sets the ready timeout.
    #[must_use]
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Sets the heartbeat interval and timeout.
    #[must_use]
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.heartbeat_interval = interval;
        self.heartbeat_timeout = timeout;
        self
    }

    /// Sets the respawn backoff's first delay and ceiling.
    #[must_use]
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max;
        self
    }

    /// Sets [`min_uptime`](Self::min_uptime).
    #[must_use]
    pub fn min_uptime(mut self, uptime: Duration) -> Self {
        self.min_uptime = uptime;
        self
    }

    /// Sets how many slots a rolling restart replaces at once.
    #[must_use]
    pub fn restart_parallelism(mut self, slots: usize) -> Self {
        self.restart_parallelism = slots;
        self
    }

    /// Adds a listening socket for program mode (see [`listen`](Self::listen)).
    #[must_use]
    pub fn listen(mut self, name: impl Into<String>, address: ListenAddress) -> Self {
        self.listen.push(InheritedListener {
            name: name.into(),
            address,
            mode: None,
        });
        self
    }

    /// The CPU slot `slot`'s workers are pinned to, if any (see [`cpus`](Self::cpus)).
    pub fn cpus_of(&self, slot: u32) -> Option<Vec<usize>> {
        let count = self.cpus.len();
        (count > 0).then(|| vec![self.cpus[(slot.max(1) as usize - 1) % count]])
    }

    /// Whether workers are programs that do not link `cluster-worker` (listeners given).
    pub fn program_mode(&self) -> bool {
        !self.listen.is_empty()
    }

    /// What `new` changes that a running watcher holds for its whole life and cannot
    /// change in place (its listening sockets are bound for that mode and those
    /// addresses): the balance mode or the listeners, by name; `None` when `new` can be
    /// applied by a reload.
    pub fn fixed_for_life_change(&self, new: &Self) -> Option<&'static str> {
        if self.balance != new.balance || self.sticky_key() != new.sticky_key() {
            Some("the balance mode")
        } else if self.listen != new.listen {
            Some("the listeners (--listen)")
        } else {
            None
        }
    }

    /// Checks the knobs against each other.
    ///
    /// # Errors
    /// [`ConfigError`] naming the knob: a heartbeat timeout not above its interval (every
    /// worker would be killed), a zero interval or parallelism, a backoff ceiling below its
    /// first delay.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_interval.is_zero() {
            return Err(ConfigError("the heartbeat interval must be above 0".into()));
        }
        if self.heartbeat_timeout <= self.heartbeat_interval {
            return Err(ConfigError(format!(
                "the heartbeat timeout ({:?}) must be above the heartbeat interval ({:?})",
                self.heartbeat_timeout, self.heartbeat_interval
            )));
        }
        if self.ready_timeout.is_zero() {
            return Err(ConfigError("the ready timeout must be above 0".into()));
        }
        if self.restart_parallelism == 0 {
            return Err(ConfigError(
                "the restart parallelism must be at least 1".into(),
            ));
        }
        if self.program_mode() && self.balance.hands_off() {
            return Err(ConfigError(format!(
                "{} needs workers that take connections from the watcher \
                 (cluster-worker programs); programs given listeners accept by themselves: \
                 use shared or reuseport",
                self.balance.as_str()
            )));
        }
        match (&self.hash_key, self.balance) {
            (None, _) | (Some(_), Balance::Hash) | (Some(HashKey::Ip), Balance::Reuseport) => {}
            (Some(key), Balance::Reuseport) => {
                return Err(ConfigError(format!(
                    "reuseport hashes the client's address only (hash=ip), not {key}: \
                     the kernel steers connections before anything is read"
                )));
            }
            (Some(key), balance) => {
                return Err(ConfigError(format!(
                    "a hash key ({key}) needs the hash balance mode, not {}",
                    balance.as_str()
                )));
            }
        }
        if self.drain_spread > self.shutdown_timeout {
            return Err(ConfigError(format!(
                "the drain spread ({:?}) must fit in the shutdown timeout ({:?}), which cuts what is left of the drain",
                self.drain_spread, self.shutdown_timeout
            )));
        }
        let quic = self
            .listen
            .iter()
            .filter(|l| matches!(l.address, ListenAddress::Quic(_)))
            .count();
        let mut ports = std::collections::HashSet::new();
        for listener in &self.listen {
            if let ListenAddress::Udp(addr) | ListenAddress::Quic(addr) = &listener.address
                && addr.port() != 0
                && !ports.insert(*addr)
            {
                return Err(ConfigError(format!(
                    "{addr} is listened on twice: two UDP groups on one port would be one \
                     group to the kernel"
                )));
            }
        }
        if quic > 1 {
            return Err(ConfigError(
                "at most one quic:// listener: a worker has one connection-ID prefix \
                 (CLUSTER_QUIC_CID_PREFIX)"
                    .into(),
            ));
        }
        if self.backoff_max < self.backoff_initial {
            return Err(ConfigError(format!(
                "the backoff ceiling ({:?}) must not be below its first delay ({:?})",
                self.backoff_max, self.backoff_initial
            )));
        }
        Ok(())
    }
}

/// A [`WatcherConfig`] whose knobs contradict each other.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);
