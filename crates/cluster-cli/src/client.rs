//! `cluster status | restart | reload | scale | stop | upgrade | logs`: clients of a running cluster's
//! control socket (found by `--name` or `--control`), speaking `cluster_ipc::control`.

use std::ffi::OsStr;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use cluster_ipc::control::{ControlClient, Request, Response, ScaleTo};
use cluster_watcher::ClusterStatus;

use crate::table;

/// Talk to a running cluster through its control socket.
#[derive(Debug, Parser)]
#[command(name = "cluster")]
pub(crate) struct ClientArgs {
    #[command(subcommand)]
    command: ClientCommand,

    /// The cluster's name, as given to --name when it started
    #[arg(
        short,
        long,
        global = true,
        env = "CLUSTER_NAME",
        default_value = "cluster"
    )]
    name: String,

    /// The control socket [default: from --name]
    #[arg(long, global = true, env = "CLUSTER_CONTROL", value_name = "PATH")]
    control: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum ClientCommand {
    /// One row per slot: pid, generation, state, uptime, restarts by cause, last exit,
    /// memory and CPU of the worker's process tree, heartbeat age
    Status {
        /// The whole snapshot as JSON
        #[arg(long)]
        json: bool,
    },
    /// A rolling restart; returns when it has finished (status 1 and the reason if a
    /// replacement failed: its old worker kept serving)
    Restart,
    /// Read the configuration file (and its env file) again and apply what changed, with
    /// no connection refused; returns once the new configuration is kept (status 1 and the
    /// reason if it was refused, or rolled back: the old configuration serves again)
    Reload,
    /// A live view: per worker its state, connections per second, open connections, CPU,
    /// memory, restarts and last exit, refreshed every second; keys: r restart, + and -
    /// scale, q quit
    Top {
        /// One JSON object per refresh instead, for scripts
        #[arg(long)]
        json: bool,
        /// Time between refreshes
        #[arg(long, default_value = "1s", value_parser = parse_interval)]
        interval: Duration,
    },
    /// Run N workers, or N more (+N) or fewer (-N)
    Scale {
        /// N, +N or -N
        #[arg(allow_hyphen_values = true)]
        workers: String,
    },
    /// Stop the cluster gracefully
    Stop,
    /// Replace the watcher itself with a new one from its binary (looked up again), without
    /// refusing a connection; returns once the new watcher has taken over and answers (status
    /// 1 and the reason if it failed: the old watcher keeps serving)
    Upgrade,
    /// The cluster's log stream: recent lines, and with -f the ones that follow
    Logs {
        /// Keep printing new lines
        #[arg(short, long)]
        follow: bool,
        /// Only this worker's lines
        #[arg(long, value_name = "SLOT")]
        worker: Option<u32>,
        /// Instead: open the log file again, after logrotate renamed it (postrotate)
        #[arg(long, conflicts_with_all = ["follow", "worker"])]
        reopen: bool,
    },
}

/// Whether the first argument names a client command rather than a program to run.
pub(crate) fn is_client_command(first: &OsStr) -> bool {
    matches!(
        first.to_str(),
        Some("status" | "restart" | "reload" | "scale" | "stop" | "upgrade" | "logs" | "top")
    )
}

/// Runs a client command; status 1 with a one-line reason when it fails.
pub(crate) fn main() -> ExitCode {
    let args = ClientArgs::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        // Nobody reads our output any more (`cluster status | head -1`): not a failure.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cluster: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether `error` is our own output closed (`cluster status | head -1`), not the control
/// socket: a cluster that refused us and closed the connection is a failure, and says so.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    let from_the_socket = error.chain().any(|cause| {
        cause
            .downcast_ref::<cluster_ipc::control::ControlError>()
            .is_some()
    });
    !from_the_socket
        && error.chain().any(|cause| {
            cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
        })
}

/// How long an answer may take: a status or a scale answers at once; a restart, an
/// upgrade or a followed log take as long as they take.
fn answer_limit(command: &ClientCommand) -> Option<Duration> {
    match command {
        ClientCommand::Status { .. } | ClientCommand::Scale { .. } | ClientCommand::Stop => {
            Some(Duration::from_secs(30))
        }
        ClientCommand::Top { .. } => Some(Duration::from_secs(30)),
        ClientCommand::Restart
        | ClientCommand::Reload
        | ClientCommand::Upgrade
        | ClientCommand::Logs { .. } => None,
    }
}

/// `--interval`: a duration of at least 100 ms.
fn parse_interval(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("{text:?}: seconds, such as 1s or 0.5"))?;
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| *d >= Duration::from_millis(100))
        .ok_or_else(|| format!("{text:?}: at least 0.1 s"))
}

fn request(command: &ClientCommand) -> anyhow::Result<Request> {
    Ok(match command {
        ClientCommand::Top { .. } => Request::Status,
        ClientCommand::Status { .. } => Request::Status,
        ClientCommand::Restart => Request::Restart,
        ClientCommand::Reload => Request::Reload,
        ClientCommand::Stop => Request::Stop,
        ClientCommand::Upgrade => Request::Upgrade,
        ClientCommand::Scale { workers } => {
            let count: i64 = workers
                .parse()
                .with_context(|| format!("{workers:?} is not N, +N or -N"))?;
            let to = match workers.as_bytes().first() {
                Some(b'+' | b'-') => ScaleTo::Delta(count),
                _ => ScaleTo::Workers(count),
            };
            Request::Scale { to }
        }
        ClientCommand::Logs { reopen: true, .. } => Request::ReopenLogs,
        ClientCommand::Logs { follow, worker, .. } => Request::Logs {
            follow: *follow,
            worker: *worker,
        },
    })
}

fn run(args: &ClientArgs) -> anyhow::Result<()> {
    let path = args
        .control
        .clone()
        .unwrap_or_else(|| cluster_watcher::default_control_path(&args.name));
    if let ClientCommand::Top { json, interval } = &args.command {
        return crate::top::run(&path, *interval, *json);
    }
    let mut client =
        ControlClient::connect(&path, answer_limit(&args.command)).with_context(|| {
            format!(
                "no cluster answers on {} (is it running? --name or --control)",
                path.display()
            )
        })?;
    let request = request(&args.command)?;
    if let Request::Logs { .. } = request {
        return print_logs(&mut client, &request);
    }
    let answer = client.ask(&request).context("the cluster's answer")?;
    let mut stdout = std::io::stdout().lock();
    match (&args.command, answer) {
        (_, Response::Failed(why)) => bail!("{why}"),
        (ClientCommand::Status { json: true }, Response::Status(status)) => {
            writeln!(stdout, "{}", serde_json::to_string_pretty(&status)?)?;
        }
        (ClientCommand::Status { json: false }, Response::Status(status)) => {
            print_table(&mut stdout, &args.name, &status)?;
        }
        (ClientCommand::Scale { .. }, Response::Scaled { workers }) => {
            writeln!(stdout, "{workers} workers")?;
        }
        (ClientCommand::Restart, Response::Done) => writeln!(stdout, "rolling restart complete")?,
        (ClientCommand::Stop, Response::Done) => writeln!(stdout, "stopping")?,
        (ClientCommand::Logs { .. }, Response::Done) => writeln!(stdout, "log file reopened")?,
        (
            ClientCommand::Reload,
            Response::Reloaded {
                generation,
                changed,
            },
        ) => {
            let changed = match changed.is_empty() {
                true => "nothing changed; workers replaced".to_owned(),
                false => format!("changed {}", changed.join(", ")),
            };
            writeln!(
                stdout,
                "reloaded: configuration generation {generation}, {changed}"
            )?;
        }
        (ClientCommand::Upgrade, Response::Upgraded { pid }) => {
            writeln!(stdout, "upgraded: the new watcher is pid {pid}")?;
        }
        (_, other) => bail!("an answer that does not fit the request: {other:?}"),
    }
    Ok(())
}

fn print_table(out: &mut impl Write, name: &str, status: &ClusterStatus) -> std::io::Result<()> {
    for line in table::render(name, status) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

fn print_logs(client: &mut ControlClient, request: &Request) -> anyhow::Result<()> {
    client.send(request)?;
    let mut stdout = std::io::stdout().lock();
    while let Some(answer) = client.receive()? {
        match answer {
            Response::Line { line, .. } => writeln!(stdout, "{line}")?,
            Response::Failed(why) => bail!("{why}"),
            _ => {}
        }
    }
    Ok(())
}
