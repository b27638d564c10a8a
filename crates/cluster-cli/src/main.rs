//! `cluster`: runs a program as a supervised cluster of worker processes.
//!
//! A thin shell around `cluster-watcher`: parses the command line into a validated
//! configuration ([`args`]), sets up logging that cannot stall supervision ([`logging`]),
//! writes the pid file ([`pid_file`]), maps signals to stop, rolling restart and scaling
//! ([`signals`]), runs the development loop of `--watch` ([`watch`]), and upgrades itself
//! without refusing a connection ([`upgrade`]).
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
mod upgrade;
mod watch;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use cluster_watcher::{ClusterWatcher, WatcherConfig};
use tracing::Instrument;

use crate::args::Args;
use crate::pid_file::PidFile;
use crate::signals::{Signals, Supervised};

fn main() -> ExitCode {
    upgrade::remember_binary();
    if std::env::args_os()
        .nth(1)
        .is_some_and(|first| client::is_client_command(&first))
    {
        return client::main();
    }
    // Socket activation's listeners first: marking every other inheritance close-on-exec
    // takes ownership of descriptor numbers.
    let activated = cluster_ipc::activated_sockets();
    // Started by an old watcher to take over from it (an upgrade): its two sockets.
    let predecessor = match cluster_watcher::PredecessorLink::inherited() {
        Ok(ends) => ends,
        Err(e) => return fail(&anyhow::Error::new(e).context("taking over from the old watcher")),
    };
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
    let outcome =
        runtime.block_on(run(args, config, &logging, activated, predecessor).instrument(span));
    drop(runtime);
    drop(logging);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// What ended the main loop.
enum Ending {
    /// A stop, and what asked for it.
    Stop(&'static str),
    /// A new watcher is ready to take over.
    Upgrade(Box<upgrade::Successor>),
}

/// Runs the cluster until a stop signal or an upgrade; an error is the reason for exit
/// status 1.
async fn run(
    args: Args,
    mut config: WatcherConfig,
    logging: &logging::Logging,
    activated: Vec<cluster_ipc::ActivatedSocket>,
    predecessor: Option<cluster_watcher::SuccessorEnds>,
) -> anyhow::Result<()> {
    let predecessor = predecessor
        .map(cluster_watcher::PredecessorLink::new)
        .transpose()
        .context("taking over from the old watcher")?;
    for path in &args.watch {
        if !path.exists() {
            bail!("--watch {}: no such file or directory", path.display());
        }
    }
    if let Some(build) = &args.build
        && predecessor.is_none()
    {
        // The first build before the first start: the program may not exist yet.
        watch::run_build(build)
            .await
            .map_err(|why| anyhow::anyhow!("the build failed ({why}); nothing to start"))?;
    }
    config.program = args::resolve_program(&config.program)?;
    let ready_timeout = config.ready_timeout;
    // A new watcher writes the pid file once the old one let go of it.
    let mut pid_file = match &predecessor {
        None => args.pid_file.as_deref().map(PidFile::create).transpose()?,
        Some(_) => None,
    };
    let mut workers = args.worker_count();
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
    if let Some(link) = &predecessor {
        match link.receive_sockets(watcher.server_sockets()).await {
            Ok(count) => workers = count.max(1),
            Err(e) => {
                link.failed(&e.to_string()).await;
                return Err(e).context("taking over the old watcher's sockets");
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
        upgrade = predecessor.is_some(),
        "starting cluster"
    );
    tokio::select! {
        started = watcher.start(workers) => {
            if let Err(e) = started {
                if let Some(link) = &predecessor {
                    link.failed(&format!("a worker failed to start: {e}")).await;
                }
                return Err(e).context("no cluster: a worker failed to start");
            }
        }
        cause = signals.stop() => {
            tracing::info!(signal = cause, "stopping cluster before it was ready");
            watcher.stop().await;
            return Ok(());
        }
    }
    tracing::info!(workers, "all workers ready");
    if let Some(link) = &predecessor {
        link.ready().await.context("telling the old watcher")?;
        match link
            .wait_handed_over(ready_timeout + Duration::from_secs(30))
            .await
        {
            Ok(()) => tracing::info!("upgrade: took over from the old watcher"),
            Err(e) => {
                tracing::warn!(error = %e, "upgrade: the old watcher did not let go; taking over anyway")
            }
        }
        if let Some(path) = &args.pid_file {
            pid_file = Some(PidFile::take_over(path)?);
        }
    }
    for address in watcher.server_sockets().unused_adopted() {
        tracing::warn!(%address, "a socket-activated listener no worker asked for");
    }
    notifier.notify(&format!(
        "READY=1\nMAINPID={}\nSTATUS={workers}/{workers} workers ready",
        std::process::id()
    ));
    let control = serve_control(&args, &watcher, logging);
    let metrics = serve_metrics(&args, &watcher).await?;

    // The loop's futures borrow the control server: they go before the hand-over drops it.
    let ending = {
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
        // Connections the old watcher passes on while it stops, until it is gone.
        let from_predecessor = async {
            if let Some(link) = predecessor {
                let passed = link.serve_connections(&watcher).await;
                tracing::info!(connections = passed, "upgrade: the old watcher is gone");
            }
            std::future::pending::<()>().await;
        };
        tokio::pin!(control_stop, dev_loop, from_predecessor);
        let follow = systemd::follow(&notifier, &watcher);
        let reaper = orphan_reaper(&watcher);
        tokio::pin!(follow, reaper);
        loop {
            let request = tokio::select! {
                supervised = signals.supervise(&watcher, workers) => match supervised {
                    Supervised::Stop(cause) => break Ending::Stop(cause),
                    Supervised::Upgrade => None,
                },
                // Cancel-safe: a request not taken now waits in the control server's queue.
                request = upgrade_request(control.as_ref()) => Some(request),
                () = &mut control_stop => break Ending::Stop("cluster stop"),
                () = &mut follow => break Ending::Stop("the service manager"),
                () = &mut reaper => break Ending::Stop("the orphan reaper"),
                () = &mut from_predecessor => continue,
                watching = &mut dev_loop => {
                    // It runs until the cluster stops; it ends only when it cannot watch at all.
                    watcher.stop().await;
                    return watching.context("--watch");
                }
            };
            let running = watcher.workers().iter().filter(|w| !w.stopping).count();
            tracing::info!(
                asked_by = if request.is_some() {
                    "cluster upgrade"
                } else {
                    "SIGUSR2"
                },
                "upgrade: starting a new watcher"
            );
            // A stop signal meanwhile abandons the upgrade (the new watcher is killed).
            let started = tokio::select! {
                started = upgrade::start_successor(&watcher, running.max(1), ready_timeout) => started,
                cause = signals.stop() => {
                    if let Some(request) = request {
                        request.reply(Err(format!("{cause} came first; the cluster stops")));
                    }
                    break Ending::Stop(cause);
                }
            };
            match started {
                Ok(successor) => {
                    if let Some(request) = request {
                        request.reply(Ok(successor.pid));
                    }
                    break Ending::Upgrade(Box::new(successor));
                }
                Err(e) => {
                    let why = one_line(&e);
                    tracing::error!(error = why, "upgrade failed; this watcher keeps serving");
                    if let Some(request) = request {
                        request.reply(Err(why));
                    }
                }
            }
        }
    };
    let cause = match ending {
        Ending::Stop(cause) => cause,
        Ending::Upgrade(successor) => {
            // Let go of what only one process can hold, then hand over and stop.
            drop(control);
            drop(metrics);
            // The control and metrics tasks end on this thread's next turn.
            tokio::time::sleep(Duration::from_millis(20)).await;
            notifier.notify(&format!(
                "MAINPID={}\nSTATUS=handed over to the new watcher (pid {})",
                successor.pid, successor.pid
            ));
            let pid = successor.pid;
            if let Err(e) = successor.link.hand_over(&watcher).await {
                tracing::warn!(error = %e, "upgrade: the new watcher went away during the hand-over");
            }
            tracing::info!(
                successor = pid,
                "upgrade: handed over; stopping this watcher's workers"
            );
            let exits = watcher.stop().await;
            kill_orphans(Some(pid));
            tracing::info!(
                workers = exits.len(),
                successor = pid,
                "upgrade complete: this watcher exits"
            );
            // Removed only if it still names this process (the new watcher rewrote it).
            drop(pid_file);
            return Ok(());
        }
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
    kill_orphans(None);
    let killed = exits.iter().filter(|e| e.killed.is_some()).count();
    if killed > 0 {
        bail!(
            "stopped, but {killed} of {} workers had to be killed at the shutdown timeout",
            exits.len()
        );
    }
    tracing::info!(workers = exits.len(), "cluster stopped cleanly");
    drop(pid_file);
    Ok(())
}

/// The next `cluster upgrade` request (never, without a control socket).
async fn upgrade_request(
    control: Option<&cluster_watcher::ControlServer>,
) -> cluster_watcher::UpgradeRequest {
    match control {
        Some(control) => control.upgrade_requested().await,
        None => std::future::pending().await,
    }
}

/// `--metrics`: the Prometheus endpoint and health checks. After an upgrade the old
/// watcher may still be letting go of the port for a moment: tried for a second.
async fn serve_metrics(
    args: &Args,
    watcher: &ClusterWatcher,
) -> anyhow::Result<Option<cluster_watcher::MetricsServer>> {
    let Some(address) = args.metrics else {
        return Ok(None);
    };
    let readiness = match args.readyz {
        args::ReadyzArg::Any => cluster_watcher::Readiness::Any,
        args::ReadyzArg::All => cluster_watcher::Readiness::All,
    };
    let mut attempts = 0;
    let server = loop {
        match watcher.serve_metrics(address, readiness).await {
            Ok(server) => break server,
            Err(e) if attempts < 10 && e.kind() == std::io::ErrorKind::AddrInUse => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot serve metrics on {address}"));
            }
        }
    };
    tracing::info!(address = %server.local_addr(), "metrics on http://{}/metrics", server.local_addr());
    Ok(Some(server))
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

/// SIGKILLs and reaps every remaining child (the workers are gone by now), but `spare` (a
/// new watcher that took over).
fn kill_orphans(spare: Option<u32>) {
    let me = std::process::id();
    for _ in 0..3 {
        let children: Vec<i32> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
            .filter(|&pid| spare != Some(pid as u32))
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
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
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
