//! `cluster`: runs a program as a supervised cluster of worker processes.
//!
//! A thin shell around `cluster-watcher`: parses the command line into a validated
//! configuration ([`args`]), sets up logging that cannot stall supervision ([`logging`]),
//! writes the pid file ([`pid_file`]), maps signals to stop, rolling restart and scaling
//! ([`signals`]), and runs the development loop of `--watch` ([`watch`]).
//!
//! Exit status: 0 after a clean stop, 1 with a one-line reason on standard error, 2 for bad
//! arguments (clap's convention).

mod args;
mod client;
mod fds;
mod logging;
mod pid_file;
mod signals;
mod systemd;
mod watch;

use std::process::ExitCode;

use anyhow::{Context, bail};
use cluster_watcher::{ClusterWatcher, WatcherConfig};
use tracing::Instrument;

use crate::args::Args;
use crate::pid_file::PidFile;
use crate::signals::Signals;

fn main() -> ExitCode {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|first| client::is_client_command(&first))
    {
        return client::main();
    }
    // Socket activation's listeners first: marking every other inheritance close-on-exec
    // takes ownership of descriptor numbers.
    let activated = cluster_ipc::activated_sockets();
    fds::close_inherited_on_exec();
    // A container's PID 1, or any process whose workers double-fork: orphans of the workers
    // come to us, are reaped and stopped with the cluster.
    let _ = rustix::process::set_child_subreaper(Some(rustix::process::getpid()));
    let (args, config) = Args::parse_valid();
    // Declared before the runtime, so dropped after it: lines logged while the runtime shuts
    // down are still written.
    let logging = match logging::init(&args) {
        Ok(logging) => logging,
        Err(e) => return fail(&e),
    };
    // One thread is plenty for supervising, and it keeps the round-robin hand-off free of
    // cross-thread wake-ups on the path of every connection.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&anyhow::Error::new(e).context("cannot start the runtime")),
    };
    // Every line the cluster logs, its own and the watcher's tasks' (which run in the span
    // current when the watcher is created), carries the name.
    let span = tracing::info_span!("cluster", name = %args.name);
    let outcome = runtime.block_on(run(args, config, &logging, activated).instrument(span));
    drop(runtime);
    drop(logging);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Runs the cluster until a stop signal; an error is the reason for exit status 1.
async fn run(
    args: Args,
    mut config: WatcherConfig,
    logging: &logging::Logging,
    activated: Vec<cluster_ipc::ActivatedSocket>,
) -> anyhow::Result<()> {
    for path in &args.watch {
        if !path.exists() {
            bail!("--watch {}: no such file or directory", path.display());
        }
    }
    if let Some(build) = &args.build {
        // The first build before the first start: the program may not exist yet.
        watch::run_build(build)
            .await
            .map_err(|why| anyhow::anyhow!("the build failed ({why}); nothing to start"))?;
    }
    config.program = args::resolve_program(&config.program)?;
    let _pid_file = args.pid_file.as_deref().map(PidFile::create).transpose()?;
    let workers = args.worker_count();
    let balance = config.balance;
    let watcher = ClusterWatcher::new(config);
    for cluster_ipc::ActivatedSocket { name, fd } in activated {
        match watcher.server_sockets().adopt(fd) {
            Ok(address) => {
                tracing::info!(%address, name = name.as_deref().unwrap_or("-"), "adopted a socket-activated listener")
            }
            Err(e) => {
                tracing::warn!(error = %e, "an inherited descriptor (LISTEN_FDS) is not a listening socket; closed")
            }
        }
    }
    let notifier = systemd::Notifier::from_env();
    let mut signals = Signals::register()?;
    tokio::spawn(logging.report_drops().in_current_span());

    tracing::info!(
        workers,
        balance = balance.as_str(),
        pid = std::process::id(),
        "starting cluster"
    );
    tokio::select! {
        started = watcher.start(workers) => started.context("no cluster: a worker failed to start")?,
        cause = signals.stop() => {
            tracing::info!(signal = cause, "stopping cluster before it was ready");
            watcher.stop().await;
            return Ok(());
        }
    }
    tracing::info!(workers, "all workers ready");
    for address in watcher.server_sockets().unused_adopted() {
        tracing::warn!(%address, "a socket-activated listener no worker asked for");
    }
    notifier.notify(&format!(
        "READY=1\nMAINPID={}\nSTATUS={workers}/{workers} workers ready",
        std::process::id()
    ));
    let control = serve_control(&args, &watcher, logging);
    let _metrics = match args.metrics {
        Some(address) => {
            let readiness = match args.readyz {
                args::ReadyzArg::Any => cluster_watcher::Readiness::Any,
                args::ReadyzArg::All => cluster_watcher::Readiness::All,
            };
            let server = watcher
                .serve_metrics(address, readiness)
                .await
                .with_context(|| format!("cannot serve metrics on {address}"))?;
            tracing::info!(address = %server.local_addr(), "metrics on http://{}/metrics", server.local_addr());
            Some(server)
        }
        None => None,
    };

    let control_stop = async {
        match &control {
            Some(control) => control.stop_requested().await,
            None => std::future::pending().await,
        }
    };
    let dev_loop = async {
        if args.watch.is_empty() {
            return std::future::pending().await;
        }
        let options = watch::WatchOptions {
            paths: args.watch.clone(),
            build: args.build.clone(),
            debounce: args.debounce,
        };
        watch::run(options, &watcher).await
    };
    let cause = tokio::select! {
        cause = signals.supervise(&watcher, workers) => cause,
        watching = dev_loop => {
            // It runs until the cluster stops; it ends only when it cannot watch at all.
            watcher.stop().await;
            return watching.context("--watch");
        }
        () = control_stop => "cluster stop",
        () = systemd::follow(&notifier, &watcher) => "the service manager",
        () = orphan_reaper(&watcher) => "the orphan reaper",
    };
    if !args.stop_delay.is_zero() {
        // Report not-ready first and keep serving, so load balancers deregister us before
        // the workers drain (Kubernetes' preStop problem).
        watcher.set_draining(true);
        notifier.notify(&format!(
            "STATUS=stopping in {:.1} s: not ready, still serving",
            args.stop_delay.as_secs_f64()
        ));
        tracing::info!(delay = ?args.stop_delay, "stop delay: reporting not ready, still serving");
        tokio::time::sleep(args.stop_delay).await;
    }
    notifier.notify("STOPPING=1\nSTATUS=stopping");
    tracing::info!(signal = cause, "stopping cluster");
    let exits = watcher.stop().await;
    // What workers left behind outside their process groups (a daemonized grandchild came
    // to us as subreaper) goes with the cluster.
    kill_orphans();
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

/// Reaps every zombie child that is not a worker: orphans of double-forking workers
/// re-parented to this subreaper (or PID 1). Workers are left to the watcher, which waits for
/// each itself (the list of workers is published before any of them can be reaped).
fn reap_orphans(workers: &[u32]) {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, after)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = after.split_whitespace();
        let (state, parent) = (fields.next(), fields.next());
        if state == Some("Z")
            && parent == Some(me.as_str())
            && !workers.contains(&(pid as u32))
            && let Some(pid) = rustix::process::Pid::from_raw(pid)
        {
            let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG);
        }
    }
}

/// SIGKILLs and reaps every remaining child (the workers are gone by now).
fn kill_orphans() {
    let me = std::process::id();
    for _ in 0..3 {
        let children: Vec<i32> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                    stat.rsplit_once(')')
                        .and_then(|(_, after)| after.split_whitespace().nth(1).map(str::to_owned))
                        == Some(me.to_string())
                })
            })
            .collect();
        if children.is_empty() {
            return;
        }
        for pid in children {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
            }
        }
    }
}

/// Reaps orphans every second, for as long as the cluster runs.
async fn orphan_reaper(watcher: &ClusterWatcher) {
    let mut ticks = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        ticks.tick().await;
        let workers: Vec<u32> = watcher.workers().iter().map(|w| w.pid).collect();
        reap_orphans(&workers);
    }
}

/// The control socket: at `--control` (its failure is fatal), else at the default path for
/// `--name` (best effort: another cluster of that name may own it).
fn serve_control(
    args: &Args,
    watcher: &ClusterWatcher,
    logging: &logging::Logging,
) -> Option<cluster_watcher::ControlServer> {
    let (path, explicit) = match &args.control {
        Some(path) => (path.clone(), true),
        None => (cluster_watcher::default_control_path(&args.name), false),
    };
    match watcher.serve_control(&path, Some(logging.feed.clone())) {
        Ok(server) => {
            tracing::info!(path = %path.display(), "control socket ready");
            Some(server)
        }
        Err(e) if explicit => {
            tracing::error!(path = %path.display(), error = %e, "no control socket");
            None
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "no control socket (give --control PATH or another --name)");
            None
        }
    }
}

/// Prints `error` as one line on standard error; exit status 1.
fn fail(error: &anyhow::Error) -> ExitCode {
    eprintln!("cluster: {}", one_line(error));
    ExitCode::FAILURE
}

/// The error and its causes, `: `-separated, on one line. Unlike anyhow's `{:#}`, a cause is
/// left out when the message before it already contains its text: many errors (`thiserror`'s
/// `"...: {source}"`) print their source themselves, which `{:#}` would print a second time
/// ("Too many open files (os error 24): Too many open files (os error 24)").
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    let mut previous = String::new();
    for cause in error.chain() {
        let text = cause.to_string().replace(['\n', '\r'], " ");
        if previous.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
        previous = text;
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wraps(std::io::Error);

    impl std::fmt::Display for Wraps {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot run ./server: {}", self.0)
        }
    }

    impl std::error::Error for Wraps {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_already_in_its_parents_text_is_not_repeated() {
        let error = anyhow::Error::new(Wraps(std::io::Error::from_raw_os_error(24)))
            .context("no cluster: a worker failed to start");
        let line = one_line(&error);
        assert_eq!(line.matches("Too many open files").count(), 1, "{line}");
        assert!(
            line.starts_with("no cluster: a worker failed to start: cannot run ./server: "),
            "{line}"
        );
    }

    #[test]
    fn causes_not_yet_said_are_kept_on_one_line() {
        let error = anyhow::Error::new(std::io::Error::from_raw_os_error(2))
            .context("cannot write pid file /x/y.pid\n(second line)");
        let line = one_line(&error);
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.starts_with("cannot write pid file /x/y.pid (second line): No such file"),
            "{line}"
        );
    }
}
