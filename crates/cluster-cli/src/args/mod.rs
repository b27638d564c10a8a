//! The command line: clap's [`Args`], and turning them into a validated [`WatcherConfig`];
//! the parsers of its values are in `values.rs`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

mod layers;
mod user;
mod values;

pub(crate) use self::layers::{LoadError, Loaded, changed, load, program_of};

use self::user::{CpuAffinity, User, parse_cpu_affinity, parse_group, parse_user};
use self::values::{
    BalanceChoice, BalanceParser, ReadyAfter, parse_duration, parse_env_entry, parse_listen,
    parse_log_filter, parse_ready_after, parse_signal, parse_size,
};
use cluster_watcher::{Balance, WatcherConfig};

/// Run PROGRAM as a supervised cluster of worker processes.
///
/// Workers that crash are replaced (with exponential backoff if they keep crashing), workers
/// that hang are killed and replaced, and restarts are rolling: a new worker must be ready
/// before the old one is stopped, and listening sockets stay open throughout.
///
/// Durations are seconds (`10`, `0.5`) or a number with a unit: `ms`, `s`, `m` or `h`
/// (`500ms`, `10s`, `2m`).
///
/// Settings come from the command line, then CLUSTER_* variables, then the file of
/// --config (`cluster check -c FILE` checks one), then the defaults shown.
///
/// Signals: SIGINT, SIGTERM, SIGQUIT stop gracefully; SIGUSR1 restarts all workers one by
/// one; SIGHUP (as in Gunicorn and nginx; `systemctl reload`) reloads: the settings are read
/// again and applied, a bad file changes nothing and a new configuration whose workers fail
/// is rolled back; SIGTTIN adds a worker, SIGTTOU removes one; SIGUSR2 (as in nginx) upgrades
/// the watcher itself: a new one from this binary's path takes the sockets, and this one
/// exits once the new workers are ready.
///
/// Exit status: 0 after a clean stop; 1 with a one-line reason when PROGRAM cannot run, no
/// worker becomes ready, or workers had to be killed at the shutdown timeout; 2 for bad
/// arguments or a bad configuration file.
#[derive(Debug, Parser)]
#[command(name = "cluster", version, about, long_about, after_help = EXAMPLES)]
pub(crate) struct Args {
    /// Read settings from this TOML file: each key is a long option below (`workers = 4`,
    /// `shutdown-timeout = "10s"`), plus `program`, `args` and an `[env]` table. The command
    /// line and CLUSTER_* variables override it; `cluster check` checks it, `cluster reload`
    /// (or SIGHUP) applies its changes
    #[arg(short, long, env = "CLUSTER_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    /// Number of worker processes [default: number of CPUs]
    #[arg(short, long, env = "CLUSTER_WORKERS", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_WORKERS)))]
    workers: Option<u32>,

    /// How connections reach workers [default: reuseport for programs given TCP listeners
    /// (--listen: each worker's socket is drained before it is stopped, so a restart loses
    /// no connection), else shared]
    #[arg(long, env = "CLUSTER_BALANCE", value_name = "MODE", value_parser = BalanceParser)]
    balance: Option<BalanceChoice>,

    /// A newly ready worker's share of new connections ramps from a tenth to full over this
    /// window, so a cold worker is not handed its full load at once (round-robin, least-conn,
    /// reuseport; not hash, which keeps every key where it belongs)
    #[arg(long, env = "CLUSTER_SLOW_START", default_value = "0s", value_name = "DURATION", value_parser = parse_duration)]
    slow_start: Duration,

    /// Write the watcher's pid to this file (removed on exit); refuses to start if it names
    /// a running process
    #[arg(short, long, env = "CLUSTER_PID_FILE", value_name = "PATH")]
    pub(crate) pid_file: Option<PathBuf>,

    /// Name shown in every log line
    #[arg(short, long, env = "CLUSTER_NAME", default_value = "cluster")]
    pub(crate) name: String,

    /// Log level (error, warn, info, debug, trace) or a tracing filter (also --log)
    #[arg(
        short,
        long,
        visible_alias = "log",
        env = "CLUSTER_LOG_LEVEL",
        value_name = "FILTER",
        default_value = "info",
        value_parser = parse_log_filter
    )]
    pub(crate) log_level: String,

    /// Log format
    #[arg(long, env = "CLUSTER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub(crate) log_format: LogFormat,

    /// Append logs to this file instead of standard output (also --file)
    #[arg(
        short = 'f',
        long,
        visible_alias = "file",
        env = "CLUSTER_LOG_FILE",
        value_name = "PATH"
    )]
    pub(crate) log_file: Option<PathBuf>,

    /// With --log-file: rotate it when the next line would take it over SIZE (`50M`): FILE
    /// becomes FILE.1, older copies move up, and a new FILE starts; lines are never split
    #[arg(long, env = "CLUSTER_LOG_MAX_SIZE", value_name = "SIZE", value_parser = parse_size, requires = "log_file")]
    pub(crate) log_max_size: Option<u64>,

    /// With --log-max-size: how many rotated copies to keep (FILE.1 … FILE.N)
    #[arg(long, env = "CLUSTER_LOG_KEEP", value_name = "N", default_value_t = 5)]
    pub(crate) log_keep: usize,

    /// With --log-max-size: gzip the rotated copies (FILE.1.gz …), in the background
    #[arg(long, env = "CLUSTER_LOG_COMPRESS", value_name = "BOOL", num_args = 0..=1, default_value_t = false, default_missing_value = "true", requires = "log_max_size")]
    pub(crate) log_compress: bool,

    /// Also reopen the log file on this signal (logrotate's postrotate convention;
    /// `cluster logs --reopen` does the same without one). Given USR1 or HUP, that signal
    /// reopens the log instead of restarting or reloading
    #[arg(long, env = "CLUSTER_REOPEN_SIGNAL", value_name = "SIGNAL", value_parser = parse_signal, requires = "log_file")]
    pub(crate) reopen_signal: Option<i32>,

    /// How long a stopping worker may take to finish in-flight work before it is killed;
    /// also the drain's hard cap, after which its long-lived connections left are cut (also
    /// --drain-timeout)
    #[arg(short = 't', long, visible_alias = "drain-timeout", env = "CLUSTER_SHUTDOWN_TIMEOUT", default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    shutdown_timeout: Duration,

    /// At a restart, scale-down or recycling, spread the goodbyes to long-lived connections
    /// (WebSocket Close 1012, HTTP/2 GOAWAY, the end of event streams) evenly over this
    /// window, so their clients do not all reconnect at once; at most the shutdown timeout
    #[arg(long, env = "CLUSTER_DRAIN_SPREAD", default_value = "0s", value_name = "DURATION", value_parser = parse_duration)]
    drain_spread: Duration,

    /// How long a new worker may take to report ready before it is killed
    #[arg(long, env = "CLUSTER_READY_TIMEOUT", default_value = "30s", value_name = "DURATION", value_parser = parse_duration)]
    ready_timeout: Duration,

    /// How often workers send a heartbeat
    #[arg(long, env = "CLUSTER_HEARTBEAT_INTERVAL", default_value = "1s", value_name = "DURATION", value_parser = parse_duration)]
    heartbeat_interval: Duration,

    /// Silence after which a ready worker counts as hung and is killed and replaced; must be
    /// above the heartbeat interval
    #[arg(long, env = "CLUSTER_HEARTBEAT_TIMEOUT", default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    heartbeat_timeout: Duration,

    /// Delay before the second respawn of a worker that keeps crashing at start-up (the first
    /// is immediate); doubles with each further crash
    #[arg(long, env = "CLUSTER_BACKOFF_INITIAL", default_value = "100ms", value_name = "DURATION", value_parser = parse_duration)]
    backoff_initial: Duration,

    /// Ceiling of the respawn delay; not below --backoff-initial
    #[arg(long, env = "CLUSTER_BACKOFF_MAX", default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    backoff_max: Duration,

    /// A worker that ran this long did not crash at start-up: it is replaced at once when it
    /// ends, and its backoff starts over
    #[arg(long, env = "CLUSTER_MIN_UPTIME", default_value = "1s", value_name = "DURATION", value_parser = parse_duration)]
    min_uptime: Duration,

    /// Workers replaced at once during a rolling restart
    #[arg(long, env = "CLUSTER_RESTART_PARALLELISM", default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_WORKERS)))]
    restart_parallelism: u32,

    /// The control socket that `cluster status`, `restart`, `scale`, `stop` and `logs` talk
    /// to [default: $XDG_RUNTIME_DIR/cluster/NAME.sock, /run/cluster/NAME.sock for root,
    /// else /tmp/cluster-UID/NAME.sock; skipped with a warning if another cluster of that
    /// name runs]
    #[arg(long, env = "CLUSTER_CONTROL", value_name = "PATH")]
    pub(crate) control: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics, and /healthz and /readyz probes: the
    /// supervisor's series, and the workers' own merged (per worker and worker="all", never
    /// reset): cluster-worker programs register theirs in cluster_worker::metrics; programs
    /// given listeners serve theirs on the port in CLUSTER_METRICS_PORT
    #[arg(long, env = "CLUSTER_METRICS", value_name = "ADDR")]
    pub(crate) metrics: Option<std::net::SocketAddr>,

    /// With --metrics and --listen: how often each worker's own metrics are read between
    /// scrapes (what a crashed worker's series lose at most)
    #[arg(long, env = "CLUSTER_METRICS_INTERVAL", default_value = "5s", value_name = "DURATION", value_parser = parse_duration)]
    metrics_interval: Duration,

    /// When /readyz answers 200: `any` worker ready, or `all` of them
    #[arg(long, env = "CLUSTER_READYZ", value_enum, default_value_t = ReadyzArg::Any)]
    pub(crate) readyz: ReadyzArg,

    /// Recycle a worker whose process tree's resident memory goes over SIZE (`512M`, `2G`,
    /// bytes): its replacement starts, and once ready the old one drains; past 1.5 times SIZE
    /// it is killed. Each worker's limit gets up to a tenth more, so they do not recycle
    /// together
    #[arg(long, env = "CLUSTER_MAX_MEMORY", value_name = "SIZE", value_parser = parse_size)]
    max_memory: Option<u64>,

    /// Recycle a cluster-worker program after it accepted N connections (each worker's
    /// limit gets up to a tenth more)
    #[arg(long, env = "CLUSTER_MAX_REQUESTS", value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_requests: Option<u64>,

    /// Recycle a worker older than this (replacement first, one slot at a time)
    #[arg(long, env = "CLUSTER_MAX_AGE", value_name = "DURATION", value_parser = parse_duration)]
    max_age: Option<Duration>,

    /// Spread added to each worker's --max-age, different for each [default: a tenth of
    /// --max-age]
    #[arg(long, env = "CLUSTER_RECYCLE_JITTER", value_name = "DURATION", value_parser = parse_duration)]
    recycle_jitter: Option<Duration>,

    /// On SIGTERM, first report not ready (/readyz 503, STATUS=) and keep serving this long,
    /// so load balancers deregister the instance before it drains
    #[arg(long, env = "CLUSTER_STOP_DELAY", default_value = "0s", value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) stop_delay: Duration,

    /// Hand PROGRAM this listening socket as systemd does: descriptors 3, 4, … in --listen
    /// order, with LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID, so servers that take their
    /// socket from systemd, listenfd or a `--fd 3` option run unmodified (readiness:
    /// READY=1 on NOTIFY_SOCKET, or --ready-after). ADDR is HOST:PORT (IPv6 hosts in brackets) or
    /// unix:PATH (`,mode=0660` sets the file's mode), udp://HOST:PORT (a UDP socket per
    /// slot) or quic://HOST:PORT (a UDP socket per worker, steered by QUIC connection ID;
    /// the worker's ID prefix is in CLUSTER_QUIC_CID_PREFIX); repeatable
    #[arg(long, env = "CLUSTER_LISTEN", value_name = "[NAME=]ADDR", value_delimiter = ' ', value_parser = parse_listen)]
    listen: Vec<cluster_watcher::InheritedListener>,

    /// Set this variable in every worker's environment (repeatable; over --env-file's)
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = parse_env_entry)]
    env: Vec<(String, String)>,

    /// Read variables for every worker's environment from this file (dotenv syntax:
    /// NAME=value lines); read again at each reload
    #[arg(long, env = "CLUSTER_ENV_FILE", value_name = "PATH")]
    pub(crate) env_file: Option<PathBuf>,

    /// Run every worker as this user (and its group, or GROUP): the watcher, which must be
    /// root, keeps root for binding, its pid file and control socket; workers start with
    /// supplementary groups cleared, then setgid, setuid and no-new-privileges (by name from
    /// /etc/passwd, or a number)
    #[arg(long, env = "CLUSTER_USER", value_name = "USER[:GROUP]", value_parser = parse_user)]
    user: Option<(User, Option<u32>)>,

    /// With --user: the workers' group, instead of the user's own
    #[arg(long, env = "CLUSTER_GROUP", value_name = "GROUP", value_parser = parse_group, requires = "user")]
    group: Option<u32>,

    /// Pin slot i's workers to one CPU: `auto` (CPU i mod n of those this process may use)
    /// or a list (`0,2,4-7`, taken in turn), across restarts
    #[arg(long, env = "CLUSTER_CPU_AFFINITY", value_name = "auto|LIST", value_parser = parse_cpu_affinity)]
    cpu_affinity: Option<CpuAffinity>,

    /// The workers' working directory [default: the watcher's]
    #[arg(long, env = "CLUSTER_CWD", value_name = "DIR")]
    cwd: Option<PathBuf>,

    /// With --listen: the signal that asks a worker (its whole process group) to stop
    #[arg(long, env = "CLUSTER_STOP_SIGNAL", default_value = "TERM", value_name = "SIGNAL", value_parser = parse_signal)]
    stop_signal: i32,

    /// With --listen: a worker is ready when it says READY=1 on NOTIFY_SOCKET or is seen
    /// waiting on its listener (in its epoll set, or blocked in accept); failing both, one
    /// still running this long after its start counts as ready (and the log says so), unless
    /// it is seen running an event loop that does not listen yet (a slow start-up: waited
    /// for); `off` waits for READY=1 or the listener
    #[arg(long, env = "CLUSTER_READY_AFTER", default_value = "1s", value_name = "DURATION|off", value_parser = parse_ready_after)]
    ready_after: ReadyAfter,

    /// Development loop: on a change under PATH (repeatable; files or directories,
    /// recursively), wait for the edits to settle, run --build, and on success restart the
    /// workers one by one; a failed build or a new worker that does not start leaves the old
    /// ones serving. Ignores target/, VCS directories, editor swap files and .gitignore'd paths
    #[arg(long = "watch", value_name = "PATH")]
    pub(crate) watch: Vec<PathBuf>,

    /// With --watch: run this through /bin/sh before each restart (its output goes to the
    /// log, tagged `build`); a failure keeps the running workers
    #[arg(long, value_name = "COMMAND", requires = "watch")]
    pub(crate) build: Option<String>,

    /// With --build: a build still running after this long is killed and counts as failed
    #[arg(long, default_value = "10m", value_name = "DURATION", value_parser = parse_duration, requires = "build")]
    pub(crate) build_timeout: Duration,

    /// With --watch: how long the files must stay unchanged before a build starts
    #[arg(long, default_value = "200ms", value_name = "DURATION", value_parser = parse_duration, requires = "watch")]
    pub(crate) debounce: Duration,

    /// The worker program, and the arguments passed to it unchanged (everything after
    /// PROGRAM is its own, options included: `cluster -w 2 gunicorn -w 4 app:app`)
    #[arg(trailing_var_arg = true, value_name = "PROGRAM [ARGS]...")]
    command: Vec<OsString>,
}

/// The most workers `--workers` and SIGTTIN may ask for: far beyond any machine's useful
/// count, low enough that a typo or a signal storm cannot fork-bomb the host.
pub(crate) const MAX_WORKERS: u32 = 4096;

const EXAMPLES: &str = "Examples:
  cluster -w 4 target/release/examples/hello-http 127.0.0.1:1337
  cluster --balance round-robin -p /run/app.pid ./server -- --port 8080
  cluster --ready-timeout 2m --heartbeat-timeout 30s ./slow-starting-server
  cluster -w 2 --listen 127.0.0.1:8000 uvicorn --fd 3 app:app     # any server, unmodified
  cluster -w 2 --listen http=127.0.0.1:8000 gunicorn app:app       # takes LISTEN_FDS itself
  cluster -w 4 --balance reuseport ./server 127.0.0.1:8080   # or least-conn, round-robin
  kill -USR1 $(cat /run/app.pid)      # rolling restart
  kill -USR2 $(cat /run/app.pid)      # upgrade the watcher itself (new binary, same sockets)
  cluster -w 2 --watch src --build 'cargo build -p my-app' target/debug/my-app 127.0.0.1:3000
  cluster --name shop --metrics 127.0.0.1:9100 ./server    # then: cluster status --name shop

Commands for a running cluster (found by --name or --control):
  cluster status [--json]        cluster restart        cluster scale N|+N|-N
  cluster stop                   cluster upgrade        cluster logs [-f] [--worker SLOT]
  cluster reload                 cluster top [--json]
Without a running cluster:
  cluster check -c FILE          cluster completions bash|zsh|fish      cluster man";

/// `--readyz`'s values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum ReadyzArg {
    /// At least one worker is ready
    Any,
    /// Every worker is ready
    All,
}

/// `--log-format`'s values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

impl Args {
    /// Reads the settings (command line, environment, configuration file), exiting with
    /// status 2 and a one-line reason when they are wrong, as clap does for a bad argument
    /// (PROGRAM not yet looked up).
    pub(crate) fn load_or_exit() -> Loaded {
        let argv: Vec<OsString> = std::env::args_os().collect();
        match load(&argv) {
            Ok(loaded) if loaded.config.run_as.is_some() && !rustix::process::geteuid().is_root() => {
                <Self as clap::CommandFactory>::command()
                    .error(
                        clap::error::ErrorKind::ArgumentConflict,
                        "--user needs the watcher to run as root (to bind, then start workers as that user); without root, run cluster itself as the user, or give it CAP_NET_BIND_SERVICE for low ports",
                    )
                    .exit()
            }
            Ok(loaded) => loaded,
            // clap's own errors (and --help, --version) as clap prints them.
            Err(LoadError::Clap(error)) => error.exit(),
            // The same form, usage hint and status as clap's own errors: an impossible
            // combination or a bad file is a bad argument, not a failure of the cluster.
            Err(error) => <Self as clap::CommandFactory>::command()
                .error(clap::error::ErrorKind::ArgumentConflict, error)
                .exit(),
        }
    }

    /// The watcher configuration these arguments describe, checked with
    /// [`WatcherConfig::validate`].
    pub(crate) fn watcher_config(&self) -> Result<WatcherConfig, cluster_watcher::ConfigError> {
        let Some((program, mut args)) = self.command.split_first() else {
            return Err(cluster_watcher::ConfigError("no program to run".into()));
        };
        // amphp's `cluster server -- --port 8080`: a `--` right after PROGRAM is not for it.
        if args.first().is_some_and(|a| a == "--") {
            args = &args[1..];
        }
        let BalanceChoice { mode, key } = self.balance.clone().unwrap_or_else(|| BalanceChoice {
            mode: default_balance(&self.listen),
            key: None,
        });
        let config = WatcherConfig::new(program)
            .args(args.iter().cloned())
            .balance(mode)
            .shutdown_timeout(self.shutdown_timeout)
            .ready_timeout(self.ready_timeout)
            .heartbeat(self.heartbeat_interval, self.heartbeat_timeout)
            .backoff(self.backoff_initial, self.backoff_max)
            .min_uptime(self.min_uptime)
            .restart_parallelism(self.restart_parallelism as usize);
        let mut config = config;
        config.name = self.name.clone();
        config.drain_spread = self.drain_spread;
        config.max_memory = self.max_memory;
        config.max_age = self.max_age;
        config.max_requests = self.max_requests;
        config.recycle_jitter = self
            .recycle_jitter
            .or_else(|| self.max_age.map(|age| age / 10))
            .unwrap_or_default();
        config.listen = self.listen.clone();
        config.env = self.env.iter().map(|(k, v)| (k.into(), v.into())).collect();
        config.cwd = self.cwd.clone();
        if let Some((user, group)) = &self.user {
            config.run_as = Some(cluster_watcher::Credentials {
                uid: user.uid,
                gid: self.group.or(*group).unwrap_or(user.gid),
            });
            // Where the program looks for its user's files, unless set explicitly.
            let mut own = vec![("USER", user.name.clone()), ("LOGNAME", user.name.clone())];
            own.extend(user.home.clone().map(|home| ("HOME", home)));
            let own = own.into_iter().map(|(k, v)| (k.into(), v.into()));
            config.env.splice(0..0, own);
        }
        // Programs given listeners get a port for their own metrics, merged on /metrics.
        config.app_metrics_ports = self.metrics.is_some() && config.program_mode();
        config.metrics_interval = self.metrics_interval;
        config.cpus = self
            .cpu_affinity
            .as_ref()
            .map(CpuAffinity::cpus)
            .unwrap_or_default();
        config.stop_signal = self.stop_signal;
        config.ready_after = self.ready_after.0;
        config.hash_key = key;
        config.slow_start = self.slow_start;
        if mode == Balance::Hash && config.program_mode() {
            // A program given listeners accepts by itself: the kernel hashes its clients'
            // addresses over the slots' reuseport sockets; it cannot read a request first.
            if config.hash_key != Some(cluster_watcher::HashKey::Ip) {
                return Err(cluster_watcher::ConfigError(format!(
                    "{} needs a cluster-worker program (the watcher reads the request); a \
                     program given listeners (--listen) can use hash=ip",
                    self.balance
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default()
                )));
            }
            config.balance = Balance::Reuseport;
        }
        config.validate()?;
        Ok(config)
    }

    /// Whether `--balance` (or `CLUSTER_BALANCE`, or the file) named a mode.
    pub(crate) fn balance_given(&self) -> bool {
        self.balance.is_some()
    }

    /// How many workers to start: `--workers`, or one per CPU.
    pub(crate) fn worker_count(&self) -> usize {
        self.workers.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            |n| n as usize,
        )
    }
}

/// The balance mode when none is given: `reuseport` for programs given only TCP listeners
/// (a worker's own socket is drained before its stop signal, so a program that closes what
/// it accepted but had not read at SIGTERM, as uvicorn does, loses nothing at a restart);
/// `shared` otherwise (cluster-worker programs hand their connections on themselves, and
/// Unix sockets have no reuseport groups).
fn default_balance(listen: &[cluster_watcher::InheritedListener]) -> Balance {
    // Datagram listeners are per slot or per process whatever the mode.
    let mut streams = listen
        .iter()
        .filter(|l| !l.address.is_datagram())
        .peekable();
    let tcp = |l: &cluster_watcher::InheritedListener| {
        matches!(l.address, cluster_ipc::ListenAddress::Tcp(_))
    };
    if streams.peek().is_some() && streams.all(tcp) {
        Balance::Reuseport
    } else {
        Balance::Shared
    }
}

#[cfg(test)]
mod tests;
