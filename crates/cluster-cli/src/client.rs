//! `cluster status | restart | scale | stop | upgrade | logs`: clients of a running cluster's control
//! socket (found by `--name` or `--control`), speaking its line-delimited JSON.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

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
    /// Run N workers, or N more (+N) or fewer (-N)
    Scale {
        /// N, +N or -N
        #[arg(allow_hyphen_values = true)]
        workers: String,
    },
    /// Stop the cluster gracefully
    Stop,
    /// Replace the watcher itself with a new one from its binary (looked up again), without
    /// refusing a connection; returns once the new watcher's workers are all ready (status 1
    /// and the reason if it failed: the old watcher keeps serving)
    Upgrade,
    /// The cluster's log stream: recent lines, and with -f the ones that follow
    Logs {
        /// Keep printing new lines
        #[arg(short, long)]
        follow: bool,
        /// Only this worker's lines
        #[arg(long, value_name = "SLOT")]
        worker: Option<u32>,
    },
}

/// Whether the first argument names a client command rather than a program to run.
pub(crate) fn is_client_command(first: &OsStr) -> bool {
    matches!(
        first.to_str(),
        Some("status" | "restart" | "scale" | "stop" | "upgrade" | "logs")
    )
}

/// Runs a client command; status 1 with a one-line reason when it fails.
pub(crate) fn main() -> ExitCode {
    let args = ClientArgs::parse();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cluster: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &ClientArgs) -> anyhow::Result<ExitCode> {
    let path = args
        .control
        .clone()
        .unwrap_or_else(|| cluster_watcher::default_control_path(&args.name));
    let stream = UnixStream::connect(&path).with_context(|| {
        format!(
            "no cluster answers on {} (is it running? --name or --control)",
            path.display()
        )
    })?;
    let request = match &args.command {
        ClientCommand::Status { .. } => json!({"cmd": "status"}),
        ClientCommand::Restart => json!({"cmd": "restart"}),
        ClientCommand::Stop => json!({"cmd": "stop"}),
        ClientCommand::Upgrade => json!({"cmd": "upgrade"}),
        ClientCommand::Scale { workers } => match workers.as_bytes().first() {
            Some(b'+' | b'-') => json!({"cmd": "scale", "delta": parse_count(workers)?}),
            _ => json!({"cmd": "scale", "workers": parse_count(workers)?}),
        },
        ClientCommand::Logs { follow, worker } => {
            json!({"cmd": "logs", "follow": follow, "worker": worker})
        }
    };
    let mut line = serde_json::to_vec(&request)?;
    line.push(b'\n');
    (&stream).write_all(&line)?;
    let mut reader = BufReader::new(&stream);
    if let ClientCommand::Logs { .. } = args.command {
        let mut stdout = std::io::stdout().lock();
        for line in reader.lines() {
            let answer: Value = serde_json::from_str(&line?)?;
            if let Some(text) = answer["line"].as_str() {
                writeln!(stdout, "{text}")?;
            } else if answer["ok"] == false {
                bail!("{}", answer["error"].as_str().unwrap_or("failed"));
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut text = String::new();
    reader.read_line(&mut text)?;
    let answer: Value = serde_json::from_str(&text).context("the cluster's answer")?;
    if answer["ok"] != true {
        bail!("{}", answer["error"].as_str().unwrap_or("failed"));
    }
    match &args.command {
        ClientCommand::Status { json: true } => {
            println!("{}", serde_json::to_string_pretty(&answer["status"])?);
        }
        ClientCommand::Status { json: false } => print_status(&args.name, &answer["status"]),
        ClientCommand::Scale { .. } => println!("{} workers", answer["workers"]),
        ClientCommand::Restart => println!("rolling restart complete"),
        ClientCommand::Stop => println!("stopping"),
        ClientCommand::Upgrade => println!("upgraded: the new watcher is pid {}", answer["pid"]),
        ClientCommand::Logs { .. } => {}
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_count(text: &str) -> anyhow::Result<i64> {
    text.parse()
        .with_context(|| format!("{text:?} is not N, +N or -N"))
}

/// `pm2 ls`-like rows.
fn print_status(name: &str, status: &Value) {
    let listeners: Vec<&str> = status["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    println!(
        "cluster {} (pid {}, {}{}, up {}) on {}: {} of {} workers ready{}",
        status["name"].as_str().unwrap_or(name),
        status["pid"],
        status["balance"].as_str().unwrap_or("?"),
        if status["program_mode"] == true {
            ", --listen"
        } else {
            ""
        },
        seconds(status["uptime"].as_f64()),
        if listeners.is_empty() {
            "-".to_owned()
        } else {
            listeners.join(", ")
        },
        status["ready_workers"],
        status["wanted_workers"],
        match status["rolling_restart"].as_object() {
            Some(r) => format!(", rolling restart {}/{}", r["done"], r["total"]),
            None => String::new(),
        }
    );
    println!(
        "{:>4}  {:>7}  {:>4}  {:<9} {:>8}  {:<22} {:<24} {:>9}  {:>7}  {:>9}",
        "slot",
        "pid",
        "gen",
        "state",
        "uptime",
        "restarts crash/hung/roll/recy",
        "last exit",
        "rss",
        "cpu",
        "heartbeat"
    );
    for slot in status["slots"].as_array().into_iter().flatten() {
        let restarts = &slot["restarts"];
        let restarts = format!(
            "{}/{}/{}/{}",
            restarts["crashed"], restarts["hung"], restarts["rolling"], restarts["recycled"]
        );
        let exit = slot["last_exit"]
            .as_object()
            .map(|e| {
                let why = e["killed"]
                    .as_str()
                    .or_else(|| e["stopped"].as_str())
                    .unwrap_or("crash");
                format!("{} ({why})", e["status"].as_str().unwrap_or("?"))
            })
            .unwrap_or_else(|| "-".into());
        let workers = slot["workers"].as_array().cloned().unwrap_or_default();
        if workers.is_empty() {
            let state = match slot["backing_off"].as_f64() {
                Some(left) => format!("backoff {left:.1}s"),
                None => "-".into(),
            };
            println!(
                "{:>4}  {:>7}  {:>4}  {:<9} {:>8}  {:<22} {:<24}",
                slot["slot"].to_string(),
                "-",
                slot["generation"].to_string(),
                state,
                "-",
                restarts,
                exit
            );
        }
        for worker in workers {
            println!(
                "{:>4}  {:>7}  {:>4}  {:<9} {:>8}  {:<22} {:<24} {:>9}  {:>7}  {:>9}",
                slot["slot"].to_string(),
                worker["pid"].to_string(),
                worker["generation"].to_string(),
                worker["state"].as_str().unwrap_or("?"),
                seconds(worker["uptime"].as_f64()),
                restarts,
                exit,
                bytes(worker["rss_bytes"].as_u64().unwrap_or(0)),
                format!("{:.1}s", worker["cpu_seconds"].as_f64().unwrap_or(0.0)),
                seconds(worker["heartbeat_age"].as_f64()),
            );
        }
    }
    // The balance modes' own figures, when the cluster has them.
    let slots = status["slots"].as_array().cloned().unwrap_or_default();
    let queues: Vec<String> = slots
        .iter()
        .filter_map(|s| Some(format!("{}:{}", s["slot"], s["queued"].as_u64()?)))
        .collect();
    if !queues.is_empty() {
        println!("listen queue by slot (reuseport): {}", queues.join(" "));
    }
    let open: Vec<String> = slots
        .iter()
        .flat_map(|s| {
            let slot = s["slot"].clone();
            s["workers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(move |w| Some(format!("{slot}:{}", w["open_connections"].as_u64()?)))
        })
        .collect();
    if !open.is_empty() {
        println!("open connections by slot (least-conn): {}", open.join(" "));
    }
}

fn seconds(value: Option<f64>) -> String {
    match value {
        None => "-".into(),
        Some(s) if s < 120.0 => format!("{s:.1}s"),
        Some(s) if s < 7200.0 => format!("{:.0}m", s / 60.0),
        Some(s) => format!("{:.1}h", s / 3600.0),
    }
}

fn bytes(value: u64) -> String {
    format!("{:.1} MiB", value as f64 / (1024.0 * 1024.0))
}
