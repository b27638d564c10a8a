//! Serving: the loop that acts on signals, the control socket's stop and upgrade requests,
//! the service manager and `--watch`, until the cluster stops or a new watcher takes over.

use std::time::Duration;

use anyhow::Context;
use cluster_watcher::{ClusterWatcher, ControlServer, MetricsServer, ProgramRequest, Reply};

use crate::args::{Args, ReadyzArg};
use crate::logging::Logging;
use crate::run::{Cluster, Ending};
use crate::signals::Supervised;
use crate::{one_line, orphans, systemd, upgrade, watch};

/// Why an upgrade is wanted.
enum Trigger {
    Signal,
    Control(Reply<Result<u32, String>>),
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
        self.supervise(predecessor).await
    }

    async fn supervise(&mut self, predecessor: Option<cluster_watcher::PredecessorLink>) -> Ending {
        let Self {
            args,
            watcher,
            notifier,
            signals,
            workers,
            ready_timeout,
            endpoints,
            ..
        } = self;
        let control = endpoints.control.as_ref();
        let (watcher, workers, ready_timeout) = (&*watcher, *workers, *ready_timeout);
        let dev_loop = dev_loop(args, watcher);
        // Connections the old watcher passes on while it stops, until it is gone.
        let from_predecessor = async {
            if let Some(link) = predecessor {
                let passed = link.serve_connections(watcher).await;
                tracing::info!(connections = passed, "upgrade: the old watcher is gone");
            }
            std::future::pending::<()>().await
        };
        let follow = systemd::follow(notifier, watcher);
        let reaper = orphans::reaper(watcher);
        tokio::pin!(dev_loop, from_predecessor, follow, reaper);
        loop {
            let trigger = tokio::select! {
                supervised = signals.supervise(watcher, workers) => match supervised {
                    Supervised::Stop(cause) => return Ending::Stop(cause),
                    Supervised::Upgrade => Trigger::Signal,
                },
                // Cancel-safe: a request not taken now waits in the control server's queue.
                request = next_request(control) => match request {
                    ProgramRequest::Stop(reply) => {
                        reply.send(());
                        return Ending::Stop("cluster stop");
                    }
                    ProgramRequest::Upgrade(reply) => Trigger::Control(reply),
                    other => {
                        tracing::warn!(request = ?other, "a control request this binary does not carry out");
                        continue;
                    }
                },
                () = &mut follow => return Ending::Stop("the service manager"),
                () = &mut reaper => return Ending::Stop("the orphan reaper"),
                () = &mut from_predecessor => continue,
                watching = &mut dev_loop => {
                    // It runs until the cluster stops; it ends only when it cannot watch at all.
                    let error = watching.err().unwrap_or_else(|| anyhow::anyhow!("ended"));
                    return Ending::Failed(error.context("--watch"));
                }
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
        let (asked_by, mut reply) = match trigger {
            Trigger::Signal => ("SIGUSR2", None),
            Trigger::Control(reply) => ("cluster upgrade", Some(reply)),
        };
        tracing::info!(asked_by, "upgrade: starting a new watcher");
        // The wanted count, not the running one: a restart or a backoff under way must not
        // change the size of the cluster for good.
        let workers = self.watcher.status().await.wanted_workers().max(1);
        let started = upgrade::start_successor(self.watcher, workers, self.ready_timeout);
        tokio::pin!(started);
        let stop = loop {
            tokio::select! {
                started = &mut started => match started {
                    Ok(successor) => return Some(Ending::Upgrade(Box::new(successor), reply)),
                    Err(e) => {
                        let why = one_line(&e);
                        tracing::error!(error = why, "upgrade failed; this watcher keeps serving");
                        if let Some(reply) = reply {
                            reply.send(Err(why));
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
                    _ => {}
                },
            }
        };
        // Dropping the start kills the new watcher (and its workers with it).
        if let Some(reply) = reply.take() {
            reply.send(Err(format!("{stop} came first; the cluster stops")));
        }
        Some(Ending::Stop(stop))
    }
}

/// `--watch`: rebuild and restart on changes; never ends without it.
async fn dev_loop(args: &Args, watcher: &ClusterWatcher) -> anyhow::Result<()> {
    if args.watch.is_empty() {
        return std::future::pending().await;
    }
    let options = watch::WatchOptions {
        paths: args.watch.clone(),
        build: args.build.clone(),
        build_timeout: args.build_timeout,
        debounce: args.debounce,
    };
    watch::run(options, watcher).await
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
