//! Running a cluster, mode by mode: [`prepare`] (a first build, the pid file, the sockets:
//! socket-activated, or taken over from an old watcher), [`Cluster::start`], taking over from
//! an old watcher ([`Cluster::take_over`]), [`Cluster::serve`] until a stop or an upgrade,
//! then [`Cluster::hand_over`] to a new watcher or [`Cluster::shut_down`].

use std::time::Duration;

use anyhow::{Context, bail};
use cluster_watcher::{ClusterWatcher, ControlServer, MetricsServer, PredecessorLink};

use crate::args::Args;
use crate::logging::Logging;
use crate::pid_file::PidFile;
use crate::signals::Signals;
use crate::{orphans, systemd, upgrade, watch};

/// Who waits for the outcome of an upgrade: `cluster upgrade`, or `cluster reload` (with
/// what changed).
pub(crate) enum Asker {
    Upgrade(cluster_watcher::Reply<Result<u32, String>>),
    Reload(
        cluster_watcher::Reply<crate::reload::ReloadAnswer>,
        Vec<String>,
    ),
}

impl Asker {
    /// Answers with the new watcher's pid, or why the upgrade failed.
    pub(crate) fn answer(self, outcome: Result<u32, String>) {
        match self {
            Self::Upgrade(reply) => reply.send(outcome),
            // A new watcher starts again at generation 1.
            Self::Reload(reply, changed) => reply.send(outcome.map(|_| (1, changed))),
        }
    }
}

/// A cluster being run by this process.
pub(crate) struct Cluster {
    pub(crate) args: Args,
    /// Every setting as text, as last loaded (to tell what a reload changes).
    pub(crate) settings: std::collections::BTreeMap<String, String>,
    pub(crate) watcher: ClusterWatcher,
    /// The old watcher this one takes over from (an upgrade), until it is gone.
    pub(crate) predecessor: Option<PredecessorLink>,
    pid_file: Option<PidFile>,
    pub(crate) notifier: systemd::Notifier,
    pub(crate) signals: Signals,
    pub(crate) workers: usize,
    pub(crate) ready_timeout: Duration,
    /// The control socket and the metrics endpoint, once serving.
    pub(crate) endpoints: Endpoints,
}

/// What answers on behalf of the cluster while it serves: its control socket and its
/// metrics endpoint.
#[derive(Default)]
pub(crate) struct Endpoints {
    pub(crate) control: Option<ControlServer>,
    pub(crate) metrics: Option<MetricsServer>,
}

impl Endpoints {
    /// Lets go of the control socket's path and the metrics port, for a new watcher to bind.
    pub(crate) async fn release(&mut self) {
        self.control = None;
        self.metrics = None;
        // Their tasks end on this thread's next turn.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What ended the loop.
pub(crate) enum Ending {
    /// A stop, and what asked for it.
    Stop(&'static str),
    /// A new watcher is ready to take over; the `cluster upgrade` (or `reload`) that asked,
    /// if one did.
    Upgrade(Box<upgrade::Successor>, Option<Asker>),
    /// Something this process needs failed (`--watch` cannot watch).
    Failed(anyhow::Error),
}

/// How a run ends, for `main`.
pub(crate) enum Exit {
    /// Done: exit with status 0.
    Done,
    /// This process is PID 1 (a container's init) and handed over to a new watcher, its
    /// child: it must stay, reaping and passing signals on, until that one is gone.
    StayAsInit { successor: tokio::process::Child },
}

/// Everything before the first start. `None` when a stop signal came during the first
/// build.
pub(crate) async fn prepare(
    loaded: crate::args::Loaded,
    activated: Vec<cluster_ipc::ActivatedSocket>,
    predecessor: Option<cluster_watcher::SuccessorEnds>,
) -> anyhow::Result<Option<Cluster>> {
    let crate::args::Loaded {
        args,
        mut config,
        workers: loaded_workers,
        settings,
        program_at,
    } = loaded;
    let predecessor = predecessor
        .map(PredecessorLink::new)
        .transpose()
        .context("taking over from the old watcher")?;
    // Registered first: a stop during the first build ends the build and the cluster
    // cleanly instead of killing this process outright.
    let mut signals = Signals::register(args.reopen_signal)?;
    for path in &args.watch {
        if !path.exists() {
            bail!("--watch {}: no such file or directory", path.display());
        }
    }
    if let Some(build) = &args.build
        && predecessor.is_none()
    {
        // The first build before the first start: the program may not exist yet.
        tokio::select! {
            built = watch::run_build(build, args.build_timeout) => {
                built.map_err(|why| anyhow::anyhow!("the build failed ({why}); nothing to start"))?;
            }
            cause = signals.stop() => {
                tracing::info!(signal = cause, "stopped during the first build; the build was killed");
                return Ok(None);
            }
        }
    }
    config.program = crate::args::program_of(&config, program_at.as_ref())?;
    // A new watcher writes the pid file once the old one let go of it.
    let pid_file = match &predecessor {
        None => args.pid_file.as_deref().map(PidFile::create).transpose()?,
        Some(_) => None,
    };
    let ready_timeout = config.ready_timeout;
    // Socket activation hands one socket per address, not a reuseport group: programs given
    // listeners then share it, unless a mode was asked for.
    if !activated.is_empty() && !args.balance_given() {
        config.balance = cluster_watcher::Balance::Shared;
    }
    let watcher = ClusterWatcher::new(config);
    adopt_activated(&watcher, activated);
    let mut workers = loaded_workers;
    if let Some(link) = &predecessor {
        match link.receive_sockets(&watcher).await {
            Ok(count) => workers = count.max(1),
            Err(e) => {
                link.failed(&e.to_string()).await;
                return Err(e).context("taking over the old watcher's sockets");
            }
        }
    }
    Ok(Some(Cluster {
        args,
        settings,
        watcher,
        predecessor,
        pid_file,
        notifier: systemd::Notifier::from_env(),
        signals,
        workers,
        ready_timeout,
        endpoints: Endpoints::default(),
    }))
}

/// Socket activation's listeners go to the provider, which hands them out instead of binding.
fn adopt_activated(watcher: &ClusterWatcher, activated: Vec<cluster_ipc::ActivatedSocket>) {
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
}

impl Cluster {
    /// Starts the workers; `false` when a stop signal came first.
    pub(crate) async fn start(&mut self, logging: &Logging) -> anyhow::Result<bool> {
        tokio::spawn(tracing::Instrument::in_current_span(logging.report_drops()));
        self.watcher
            .count_dropped_log_lines(logging.dropped_counter());
        tracing::info!(
            workers = self.workers,
            balance = self.watcher.config().balance_description(),
            pid = std::process::id(),
            upgrade = self.predecessor.is_some(),
            "starting cluster"
        );
        tokio::select! {
            started = self.watcher.start(self.workers) => {
                if let Err(e) = started {
                    if let Some(link) = &self.predecessor {
                        link.failed(&format!("a worker failed to start: {e}")).await;
                    }
                    return Err(e).context("no cluster: a worker failed to start");
                }
            }
            cause = self.signals.stop() => {
                tracing::info!(signal = cause, "stopping cluster before it was ready");
                self.watcher.stop().await;
                return Ok(false);
            }
        }
        tracing::info!(workers = self.workers, "all workers ready");
        for address in self.watcher.server_sockets().unused_adopted() {
            tracing::warn!(%address, "a socket-activated listener no worker asked for");
        }
        Ok(true)
    }

    /// An upgrade: tells the old watcher every worker is ready, waits until it let go of
    /// the pid file and the like, and takes them.
    pub(crate) async fn take_over(&mut self) -> anyhow::Result<()> {
        let Some(link) = &self.predecessor else {
            return Ok(());
        };
        link.ready().await.context("telling the old watcher")?;
        match link
            .wait_handed_over(self.ready_timeout + Duration::from_secs(30))
            .await
        {
            Ok(()) => tracing::info!("upgrade: took over from the old watcher"),
            Err(e) => {
                tracing::warn!(error = %e, "upgrade: the old watcher did not let go; taking over anyway")
            }
        }
        if let Some(path) = &self.args.pid_file {
            self.pid_file = Some(PidFile::take_over(path)?);
        }
        Ok(())
    }

    /// Tells the service manager (and an old watcher) that this one serves.
    pub(crate) async fn announce(&self) {
        self.notifier.notify(&format!(
            "READY=1\nMAINPID={}\nSTATUS={}/{} workers ready",
            std::process::id(),
            self.workers,
            self.workers
        ));
        if let Some(link) = &self.predecessor
            && let Err(e) = link.serving().await
        {
            tracing::debug!(error = %e, "upgrade: the old watcher went before it heard we serve");
        }
    }

    /// Lets go of what only one process can hold, hands over to the new watcher, stops this
    /// one's workers; answers the `cluster upgrade` that asked once the new one answers.
    pub(crate) async fn hand_over(
        mut self,
        successor: upgrade::Successor,
        reply: Option<Asker>,
    ) -> anyhow::Result<Exit> {
        // The new watcher binds the same paths and ports: ours go first.
        self.endpoints.release().await;
        let upgrade::Successor { link, pid, child } = successor;
        self.notifier.notify(&format!(
            "MAINPID={pid}\nSTATUS=handed over to the new watcher (pid {pid})"
        ));
        match link.hand_over(&self.watcher).await {
            Ok(handed) => {
                let serving = handed.wait_serving(Duration::from_secs(10)).await;
                if let Err(e) = &serving {
                    tracing::warn!(error = %e, "upgrade: the new watcher did not say it serves");
                }
                if let Some(reply) = reply {
                    reply.answer(serving.map(|()| pid).map_err(|e| e.to_string()));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "upgrade: the new watcher went away during the hand-over")
            }
        }
        tracing::info!(
            successor = pid,
            "upgrade: handed over; stopping this watcher's workers"
        );
        let exits = self.watcher.stop().await;
        orphans::kill_all(Some(pid));
        tracing::info!(
            workers = exits.len(),
            successor = pid,
            "upgrade complete: this watcher exits"
        );
        // Removed only if it still names this process (the new watcher rewrote it).
        drop(self.pid_file);
        if std::process::id() == 1 {
            return Ok(Exit::StayAsInit { successor: child });
        }
        drop(child);
        Ok(Exit::Done)
    }

    /// Stops the cluster: first, with `--stop-delay`, not ready while still serving; then
    /// every worker gracefully; then whatever they left behind.
    pub(crate) async fn shut_down(self, cause: &str) -> anyhow::Result<Exit> {
        let delay = self.args.stop_delay;
        if !delay.is_zero() {
            // Report not-ready first and keep serving, so load balancers deregister us before
            // the workers drain (Kubernetes' preStop problem).
            self.watcher.set_draining(true);
            self.notifier.notify(&format!(
                "STATUS=stopping in {:.1} s: not ready, still serving",
                delay.as_secs_f64()
            ));
            tracing::info!(?delay, "stop delay: reporting not ready, still serving");
            tokio::time::sleep(delay).await;
        }
        self.notifier.notify("STOPPING=1\nSTATUS=stopping");
        tracing::info!(signal = cause, "stopping cluster");
        let exits = self.watcher.stop().await;
        // What workers left behind outside their process groups (a daemonized grandchild
        // came to us as subreaper) goes with the cluster.
        orphans::kill_all(None);
        let killed = exits.iter().filter(|e| e.killed.is_some()).count();
        if killed > 0 {
            bail!(
                "stopped, but {killed} of {} workers had to be killed at the shutdown timeout",
                exits.len()
            );
        }
        tracing::info!(workers = exits.len(), "cluster stopped cleanly");
        drop(self.pid_file);
        Ok(Exit::Done)
    }

    /// Ends a run as `ending` says.
    pub(crate) async fn end(self, ending: Ending) -> anyhow::Result<Exit> {
        match ending {
            Ending::Stop(cause) => self.shut_down(cause).await,
            Ending::Upgrade(successor, reply) => self.hand_over(*successor, reply).await,
            Ending::Failed(error) => {
                self.watcher.stop().await;
                Err(error)
            }
        }
    }
}
