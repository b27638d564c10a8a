//! Serving: the loop that acts on signals, the control socket's stop, upgrade and reload
//! requests,
//! the service manager and `--watch`, until the cluster stops or a new watcher takes over.

use std::time::Duration;

use anyhow::Context;
use cluster_watcher::{ClusterWatcher, ControlServer, MetricsServer, ProgramRequest, Reply};

use crate::args::{Args, ReadyzArg};
use crate::logging::Logging;
use crate::reload::{self, ReloadAnswer};
use crate::run::{Asker, Cluster, Ending};
use crate::signals::Supervised;
use crate::{one_line, orphans, systemd, upgrade, watch};

/// Why an upgrade is wanted, and who waits for its outcome.
enum Trigger {
    Signal,
    Control(Reply<Result<u32, String>>),
    /// A reload whose changes the running watcher cannot make: the new worker count.
    Reload(Option<Asker>, usize),
}

/// What the loop does next.
enum Next {
    Upgrade(Trigger),
    Reload(Option<Reply<ReloadAnswer>>),
    Reloaded(Result<(), cluster_watcher::ReloadError>),
}

impl Cluster {
    /// Serves until a stop or an upgrade; the control socket and the metrics endpoint live
    /// as long as this does (they are let go of before a new watcher takes them).
    pub(crate) async fn serve(&mut self, logging: &Logging) -> Ending {
        self.endpoints.control = match serve_control(&self.args, &self.watcher, logging) {
            Ok(control) => control,
            Err(e) => return Ending::Failed(e),
        };
        self.endpoints.metrics = match serve_metrics(&self.args, &self.watcher).await {
            Ok(metrics) => metrics,
            Err(e) => return Ending::Failed(e),
        };
        self.announce().await;
        let predecessor = self.predecessor.take();
        self.supervise(predecessor, logging).await
    }

    async fn supervise(
        &mut self,
        predecessor: Option<cluster_watcher::PredecessorLink>,
        logging: &Logging,
    ) -> Ending {
        let watching = watch_options(&self.args);
        let Self {
            args,
            settings,
            watcher,
            notifier,
            signals,
            workers,
            ready_timeout,
            endpoints,
            ..
        } = self;
        let control = endpoints.control.as_ref();
        let (watcher, ready_timeout) = (&*watcher, *ready_timeout);
        let dev_loop = dev_loop(watching, watcher);
        let from_predecessor = from_predecessor(predecessor, watcher);
        let follow = systemd::follow(notifier, watcher);
        let reaper = orphans::reaper(watcher);
        tokio::pin!(dev_loop, from_predecessor, follow, reaper);
        let mut reloading: Option<reload::InPlace> = None;
        loop {
            let step = tokio::select! {
                supervised = signals.supervise(watcher, *workers) => on_signal(supervised, logging),
                // Cancel-safe: a request not taken now waits in the control server's queue.
                request = next_request(control) => on_request(request, logging),
                outcome = async { reloading.as_mut().expect("guarded").outcome().await }, if reloading.is_some() => {
                    Step::Next(Next::Reloaded(outcome))
                }
                () = &mut follow => Step::End(Ending::Stop("the service manager")),
                () = &mut reaper => Step::End(Ending::Stop("the orphan reaper")),
                () = &mut from_predecessor => Step::Continue,
                watching = &mut dev_loop => {
                    // It runs until the cluster stops; it ends only when it cannot watch at all.
                    let error = watching.err().unwrap_or_else(|| anyhow::anyhow!("ended"));
                    Step::End(Ending::Failed(error.context("--watch")))
                }
            };
            let next = match step {
                Step::Next(next) => next,
                Step::Continue => continue,
                Step::End(ending) => return ending,
            };
            let applied = Applied {
                args,
                settings,
                workers,
                signals,
            };
            let Some(trigger) = take_next(next, &mut reloading, watcher, notifier, applied).await
            else {
                continue;
            };
            let upgrading = Upgrade {
                watcher,
                signals: &mut *signals,
                ready_timeout,
                control,
            };
            if let Some(ending) = upgrading.run(trigger).await {
                return ending;
            }
        }
    }
}

/// Serves the connections the old watcher passes on while it stops, until it is gone;
/// never ends.
async fn from_predecessor(
    predecessor: Option<cluster_watcher::PredecessorLink>,
    watcher: &ClusterWatcher,
) {
    if let Some(link) = predecessor {
        let passed = link.serve_connections(watcher).await;
        tracing::info!(connections = passed, "upgrade: the old watcher is gone");
    }
    std::future::pending::<()>().await
}

/// What one turn of the serving loop came to.
enum Step {
    Next(Next),
    Continue,
    End(Ending),
}

/// What a signal means for the serving loop.
fn on_signal(supervised: Supervised, logging: &Logging) -> Step {
    match supervised {
        Supervised::Stop(cause) => Step::End(Ending::Stop(cause)),
        Supervised::Upgrade => Step::Next(Next::Upgrade(Trigger::Signal)),
        Supervised::Reload => Step::Next(Next::Reload(None)),
        Supervised::ReopenLogs => {
            if let Err(why) = logging.reopen("signal") {
                tracing::warn!(error = why, "cannot reopen the log");
            }
            Step::Continue
        }
    }
}

/// What a control request the program carries out means for the serving loop.
fn on_request(request: ProgramRequest, logging: &Logging) -> Step {
    match request {
        ProgramRequest::Stop(reply) => {
            reply.send(());
            Step::End(Ending::Stop("cluster stop"))
        }
        ProgramRequest::Upgrade(reply) => Step::Next(Next::Upgrade(Trigger::Control(reply))),
        ProgramRequest::Reload(reply) => Step::Next(Next::Reload(Some(reply))),
        ProgramRequest::ReopenLogs(reply) => {
            reply.send(logging.reopen("cluster logs --reopen"));
            Step::Continue
        }
    }
}

/// Carries out a reload or its outcome; says when an upgrade is due (an upgrade asked for,
/// or a reload the running watcher cannot make in place).
async fn take_next(
    next: Next,
    reloading: &mut Option<reload::InPlace>,
    watcher: &ClusterWatcher,
    notifier: &systemd::Notifier,
    applied: Applied<'_>,
) -> Option<Trigger> {
    match next {
        Next::Upgrade(trigger) => Some(trigger),
        Next::Reload(reply) => {
            if reloading.is_some() {
                tracing::warn!("reload: one is already under way");
                if let Some(reply) = reply {
                    reply.send(Err("a reload is already under way".into()));
                }
                return None;
            }
            match begin_reload(watcher, notifier, applied.settings, reply) {
                Begun::InPlace(in_place) => {
                    *reloading = Some(in_place);
                    None
                }
                Begun::Upgrade(trigger) => Some(trigger),
                Begun::Refused => None,
            }
        }
        Next::Reloaded(outcome) => {
            let done = reloading.take().expect("a reload was under way");
            finish_reload(watcher, notifier, applied, done, outcome).await;
            None
        }
    }
}

/// How a reload began.
enum Begun {
    InPlace(reload::InPlace),
    Upgrade(Trigger),
    /// The settings are wrong: nothing changed (the asker was told).
    Refused,
}

/// Reads the settings again and starts applying them; tells the service manager.
fn begin_reload(
    watcher: &ClusterWatcher,
    notifier: &systemd::Notifier,
    settings: &std::collections::BTreeMap<String, String>,
    reply: Option<Reply<ReloadAnswer>>,
) -> Begun {
    let asked_by = if reply.is_some() {
        "cluster reload"
    } else {
        "SIGHUP"
    };
    notifier.reloading("reloading the configuration");
    match reload::plan(settings) {
        Err(why) => {
            tracing::error!(asked_by, error = why, "reload refused: nothing changed");
            notifier.ready(&format!("reload refused: {why}"));
            if let Some(reply) = reply {
                reply.send(Err(why));
            }
            Begun::Refused
        }
        Ok(reload::Plan::InPlace(loaded, changed)) => {
            tracing::info!(asked_by, changed = %changed.join(", "), "reload: applying the configuration");
            Begun::InPlace(reload::InPlace::begin(watcher, loaded, changed, reply))
        }
        Ok(reload::Plan::Upgrade {
            key,
            workers,
            changed,
        }) => {
            tracing::info!(asked_by, key, changed = %changed.join(", "), "reload: this change takes a new watcher; upgrading");
            Begun::Upgrade(Trigger::Reload(
                reply.map(|r| Asker::Reload(r, changed)),
                workers,
            ))
        }
    }
}

/// What a kept reload updates in the serving loop.
struct Applied<'a> {
    args: &'a mut Args,
    settings: &'a mut std::collections::BTreeMap<String, String>,
    workers: &'a mut usize,
    signals: &'a mut crate::signals::Signals,
}

/// Answers a reload applied in place, and keeps its settings if it was kept.
async fn finish_reload(
    watcher: &ClusterWatcher,
    notifier: &systemd::Notifier,
    applied: Applied<'_>,
    done: reload::InPlace,
    outcome: Result<(), cluster_watcher::ReloadError>,
) {
    let reload::InPlace {
        loaded,
        changed,
        reply,
        ..
    } = done;
    let answer = match outcome {
        Ok(()) => {
            let reload_loaded = *loaded;
            *applied.workers = reload_loaded.workers;
            applied.signals.set_target(reload_loaded.workers);
            *applied.settings = reload_loaded.settings;
            *applied.args = reload_loaded.args;
            let generation = watcher.status().await.configuration.generation;
            tracing::info!(generation, changed = %changed.join(", "), "reload complete");
            notifier.ready(&format!("reloaded: configuration generation {generation}"));
            Ok((generation, changed))
        }
        Err(e) => {
            let why = e.to_string();
            tracing::error!(
                error = why,
                "reload failed; the last good configuration serves"
            );
            notifier.ready(&format!("reload failed: {why}"));
            Err(why)
        }
    };
    if let Some(reply) = reply {
        reply.send(answer);
    }
}

/// An upgrade of the watcher, and what may interrupt it.
struct Upgrade<'a> {
    watcher: &'a ClusterWatcher,
    signals: &'a mut crate::signals::Signals,
    ready_timeout: Duration,
    control: Option<&'a ControlServer>,
}

impl Upgrade<'_> {
    /// Starts a new watcher and waits until it is ready; `None` (this one keeps serving)
    /// when that fails. A stop, by signal or over the control socket, abandons it.
    async fn run(self, trigger: Trigger) -> Option<Ending> {
        let control = self.control;
        let (asked_by, mut asker, workers) = match trigger {
            Trigger::Signal => ("SIGUSR2", None, None),
            Trigger::Control(reply) => ("cluster upgrade", Some(Asker::Upgrade(reply)), None),
            Trigger::Reload(asker, workers) => ("reload", asker, Some(workers)),
        };
        tracing::info!(asked_by, "upgrade: starting a new watcher");
        // The wanted count, not the running one: a restart or a backoff under way must not
        // change the size of the cluster for good.
        let workers = match workers {
            Some(workers) => workers,
            None => self.watcher.status().await.wanted_workers().max(1),
        };
        let started = upgrade::start_successor(self.watcher, workers, self.ready_timeout);
        tokio::pin!(started);
        let stop = loop {
            tokio::select! {
                started = &mut started => match started {
                    Ok(successor) => return Some(Ending::Upgrade(Box::new(successor), asker)),
                    Err(e) => {
                        let why = one_line(&e);
                        tracing::error!(error = why, "upgrade failed; this watcher keeps serving");
                        if let Some(asker) = asker {
                            asker.answer(Err(why));
                        }
                        return None;
                    }
                },
                cause = self.signals.stop() => break cause,
                request = next_request(control) => match request {
                    ProgramRequest::Stop(taken) => {
                        taken.send(());
                        break "cluster stop";
                    }
                    ProgramRequest::Upgrade(second) => {
                        second.send(Err("an upgrade is already under way".into()));
                    }
                    ProgramRequest::Reload(second) => {
                        second.send(Err("an upgrade is under way".into()));
                    }
                    _ => {}
                },
            }
        };
        // Dropping the start kills the new watcher (and its workers with it).
        if let Some(asker) = asker.take() {
            asker.answer(Err(format!("{stop} came first; the cluster stops")));
        }
        Some(Ending::Stop(stop))
    }
}

/// `--watch`'s settings, if any.
fn watch_options(args: &Args) -> Option<watch::WatchOptions> {
    (!args.watch.is_empty()).then(|| watch::WatchOptions {
        paths: args.watch.clone(),
        build: args.build.clone(),
        build_timeout: args.build_timeout,
        debounce: args.debounce,
    })
}

/// `--watch`: rebuild and restart on changes; never ends without it.
async fn dev_loop(
    options: Option<watch::WatchOptions>,
    watcher: &ClusterWatcher,
) -> anyhow::Result<()> {
    match options {
        Some(options) => watch::run(options, watcher).await,
        None => std::future::pending().await,
    }
}

/// The next request for this program over the control socket (never, without one).
async fn next_request(control: Option<&ControlServer>) -> ProgramRequest {
    match control {
        Some(control) => control.next_request().await,
        None => std::future::pending().await,
    }
}

/// `--metrics`: the Prometheus endpoint and health checks. After an upgrade the old
/// watcher may still be letting go of the port for a moment: tried for a second.
async fn serve_metrics(
    args: &Args,
    watcher: &ClusterWatcher,
) -> anyhow::Result<Option<MetricsServer>> {
    let Some(address) = args.metrics else {
        return Ok(None);
    };
    let readiness = match args.readyz {
        ReadyzArg::Any => cluster_watcher::Readiness::Any,
        ReadyzArg::All => cluster_watcher::Readiness::All,
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

/// The control socket at `--control` (a failure is fatal) or at the default path for
/// `--name` (the cluster runs without one, another cluster of that name may own the path,
/// but says so as an error).
fn serve_control(
    args: &Args,
    watcher: &ClusterWatcher,
    logging: &Logging,
) -> anyhow::Result<Option<ControlServer>> {
    let path = args
        .control
        .clone()
        .unwrap_or_else(|| cluster_watcher::default_control_path(&args.name));
    match watcher.serve_control(&path, Some(logging.feed.clone())) {
        Ok(server) => {
            tracing::info!(path = %path.display(), "control socket ready");
            Ok(Some(server))
        }
        Err(e) if args.control.is_some() => {
            Err(e).with_context(|| format!("no control socket at {}", path.display()))
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "no control socket: `cluster status`, `stop` and the like cannot reach this cluster (give --control PATH or another --name)");
            Ok(None)
        }
    }
}
