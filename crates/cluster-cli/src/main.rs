//! `cluster`: runs a program as a supervised cluster of worker processes.
//!
//! A thin shell around `cluster-watcher`: parses the command line, sets up logging, writes the
//! pid file, and maps signals to stop, rolling restart and scaling.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use cluster_watcher::{Balance, ClusterWatcher, WatcherConfig};
use tokio::signal::unix::{SignalKind, signal};
use tracing::Instrument;

/// Run PROGRAM as a supervised cluster of worker processes.
///
/// Workers that crash are replaced (with exponential backoff if they keep crashing), workers
/// that hang are killed and replaced, and restarts are rolling: a new worker must be ready
/// before the old one is stopped, and listening sockets stay open throughout.
///
/// Signals: SIGINT, SIGTERM, SIGQUIT stop gracefully; SIGUSR1 and SIGHUP (as in Gunicorn and
/// nginx) restart all workers one by one; SIGTTIN adds a worker, SIGTTOU removes one.
///
/// Exit status: 0 after a clean stop; 1 with a one-line reason when PROGRAM cannot run, no
/// worker becomes ready, or workers had to be killed at the shutdown timeout; 2 for bad
/// arguments.
#[derive(Debug, Parser)]
#[command(name = "cluster", version, about, long_about, after_help = EXAMPLES)]
struct Args {
    /// Number of worker processes [default: number of CPUs]
    #[arg(short, long, env = "CLUSTER_WORKERS", value_parser = clap::value_parser!(u32).range(1..=4096))]
    workers: Option<u32>,

    /// How connections reach workers: `shared` (every worker accepts on one shared socket) or
    /// `round-robin` (the watcher accepts and hands each connection to the next worker)
    #[arg(long, env = "CLUSTER_BALANCE", value_enum, default_value_t = BalanceArg::Shared)]
    balance: BalanceArg,

    /// Write the watcher's pid to this file (removed on exit); refuses to start if it names
    /// a running process
    #[arg(short, long, env = "CLUSTER_PID_FILE")]
    pid_file: Option<PathBuf>,

    /// Name shown in every log line
    #[arg(short, long, env = "CLUSTER_NAME", default_value = "cluster")]
    name: String,

    /// Log level (error, warn, info, debug, trace) or a tracing filter
    #[arg(
        short,
        long,
        visible_alias = "log",
        env = "CLUSTER_LOG_LEVEL",
        default_value = "info"
    )]
    log_level: String,

    /// Log format
    #[arg(long, env = "CLUSTER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,

    /// Append logs to this file instead of standard output
    #[arg(short = 'f', long, visible_alias = "file", env = "CLUSTER_LOG_FILE")]
    log_file: Option<PathBuf>,

    /// Seconds a stopping worker may take to finish in-flight work before it is killed
    #[arg(short = 't', long, env = "CLUSTER_SHUTDOWN_TIMEOUT", default_value_t = 10.0, value_parser = parse_seconds)]
    shutdown_timeout: f64,

    /// The worker program
    #[arg(required = true)]
    program: OsString,

    /// Arguments passed to PROGRAM unchanged
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

const EXAMPLES: &str = "Examples:
  cluster -w 4 target/release/examples/hello-http 127.0.0.1:1337
  cluster --balance round-robin -p /run/app.pid ./server -- --port 8080
  kill -USR1 $(cat /run/app.pid)      # rolling restart";

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BalanceArg {
    Shared,
    RoundRobin,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

fn parse_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && (0.0..=86_400.0).contains(&s) => Ok(s),
        _ => Err(format!(
            "{text:?} is not a number of seconds between 0 and 86400"
        )),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // One thread is plenty for supervising, and it keeps the round-robin hand-off free of
    // cross-thread wake-ups on the path of every connection.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cluster: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = init_logging(&args) {
        eprintln!("cluster: {e:#}");
        return ExitCode::FAILURE;
    }
    // Every line the cluster logs, its own and the watcher's tasks' (which run in the span
    // current when the watcher is created), carries the name.
    let span = tracing::info_span!("cluster", name = %args.name);
    match runtime.block_on(run(args).instrument(span)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cluster: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(mut args: Args) -> anyhow::Result<()> {
    // amphp's `cluster server -- --port 8080`: a `--` right after PROGRAM is not for it.
    if args.args.first().is_some_and(|a| a == "--") {
        args.args.remove(0);
    }
    let program = resolve_program(Path::new(&args.program))?;
    let _pid_file = args.pid_file.as_deref().map(PidFile::create).transpose()?;
    let workers = args.workers.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |n| n as usize,
    );
    let balance = match args.balance {
        BalanceArg::Shared => Balance::Shared,
        BalanceArg::RoundRobin => Balance::RoundRobin,
    };
    let config = WatcherConfig::new(program)
        .args(args.args.iter().cloned())
        .balance(balance)
        .shutdown_timeout(Duration::from_secs_f64(args.shutdown_timeout));
    let watcher = ClusterWatcher::new(config);

    // Signals are registered before the first worker exists, so none is missed.
    let on = |kind: SignalKind| signal(kind).context("cannot register signal handlers");
    let (mut int, mut term, mut quit) = (
        on(SignalKind::interrupt())?,
        on(SignalKind::terminate())?,
        on(SignalKind::quit())?,
    );
    let (mut usr1, mut hup) = (on(SignalKind::user_defined1())?, on(SignalKind::hangup())?);
    let mut more = on(SignalKind::from_raw(rustix::process::Signal::TTIN.as_raw()))?;
    let mut fewer = on(SignalKind::from_raw(rustix::process::Signal::TTOU.as_raw()))?;

    tracing::info!(
        workers,
        balance = balance.as_str(),
        pid = std::process::id(),
        "starting cluster"
    );
    tokio::select! {
        started = watcher.start(workers) => started.context("no cluster: a worker failed to start")?,
        _ = int.recv() => { watcher.stop().await; return Ok(()) }
        _ = term.recv() => { watcher.stop().await; return Ok(()) }
    }
    tracing::info!(workers, "all workers ready");

    let watcher = std::sync::Arc::new(watcher);
    let mut restarting: Option<tokio::task::JoinHandle<()>> = None;
    let cause = loop {
        let restart = tokio::select! {
            _ = int.recv() => break "SIGINT",
            _ = term.recv() => break "SIGTERM",
            _ = quit.recv() => break "SIGQUIT",
            _ = usr1.recv() => "SIGUSR1",
            _ = hup.recv() => "SIGHUP",
            _ = more.recv() => {
                match watcher.add_worker().await {
                    Ok(id) => tracing::info!(worker = id.slot, "SIGTTIN: added a worker"),
                    Err(e) => tracing::error!(error = %e, "SIGTTIN: could not add a worker"),
                }
                continue;
            }
            _ = fewer.recv() => {
                match watcher.remove_worker().await {
                    Some(exit) => tracing::info!(worker = exit.id.slot, "SIGTTOU: removed a worker"),
                    None => tracing::warn!("SIGTTOU: the last worker stays"),
                }
                continue;
            }
        };
        if restarting.as_ref().is_some_and(|task| !task.is_finished()) {
            tracing::info!(signal = restart, "restart already in progress");
            continue;
        }
        tracing::info!(signal = restart, "rolling restart");
        let watcher = watcher.clone();
        restarting = Some(tokio::spawn(
            async move {
                match watcher.restart().await {
                    Ok(()) => tracing::info!("rolling restart complete"),
                    Err(e) => {
                        tracing::error!(error = %e, "rolling restart incomplete; old workers kept where replacements failed")
                    }
                }
            }
            .in_current_span(),
        ));
    };
    tracing::info!(signal = cause, "stopping cluster");
    if let Some(task) = restarting {
        task.abort();
    }
    let exits = watcher.stop().await;
    let killed = exits.iter().filter(|e| e.killed.is_some()).count();
    if killed > 0 {
        bail!(
            "stopped, but {killed} of {} workers had to be killed at the shutdown timeout",
            exits.len()
        );
    }
    tracing::info!(workers = exits.len(), "cluster stopped cleanly");
    Ok(())
}

fn init_logging(args: &Args) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .with_context(|| format!("invalid log level {:?}", args.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match &args.log_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open log file {}", path.display()))?;
            let builder = builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file));
            match args.log_format {
                LogFormat::Pretty => builder.init(),
                LogFormat::Json => builder.json().init(),
            }
        }
        None => {
            let builder = builder
                .with_ansi(std::io::stdout().is_terminal())
                .with_writer(std::io::stdout);
            match args.log_format {
                LogFormat::Pretty => builder.init(),
                LogFormat::Json => builder.json().init(),
            }
        }
    }
    Ok(())
}

/// Checks PROGRAM up front so a typo gets a one-line answer, not a failed worker.
fn resolve_program(program: &Path) -> anyhow::Result<PathBuf> {
    let candidates: Vec<PathBuf> = if program.components().count() > 1 {
        vec![program.to_owned()]
    } else {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|dir| dir.join(program))
            .collect()
    };
    let Some(found) = candidates.into_iter().find(|c| c.exists()) else {
        bail!("program {} not found", program.display());
    };
    if found.is_dir() {
        bail!("program {} is a directory", found.display());
    }
    if rustix::fs::access(&found, rustix::fs::Access::EXEC_OK).is_err() {
        bail!("program {} is not executable", found.display());
    }
    Ok(found)
}

/// The pid file: written atomically, removed on drop.
struct PidFile(PathBuf);

impl PidFile {
    fn create(path: &Path) -> anyhow::Result<Self> {
        let recorded = std::fs::read_to_string(path).ok();
        let pid = recorded
            .as_deref()
            .and_then(|t| t.trim().parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw);
        if let Some(pid) = pid.filter(|pid| rustix::process::test_kill_process(*pid).is_ok()) {
            bail!(
                "pid file {} names a running process ({}); is the cluster already running?",
                path.display(),
                pid.as_raw_nonzero()
            );
        }
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&tmp, format!("{}\n", std::process::id()))
            .and_then(|()| std::fs::rename(&tmp, path))
            .with_context(|| format!("cannot write pid file {}", path.display()))?;
        Ok(Self(path.to_owned()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
