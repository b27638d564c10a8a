//! [`Remote`]: the one way anything asks the driver: the [`ClusterWatcher`] handle, the
//! control socket and the metrics endpoint.
//!
//! [`ClusterWatcher`]: crate::ClusterWatcher

use std::sync::Arc;
use std::sync::atomic::Ordering;

use cluster_ipc::status::About;
use tokio::sync::{mpsc, oneshot};

use crate::core::{Failure, Outcome};
use crate::driver::Command;
use crate::shared::Shared;
use crate::{ClusterStatus, ReloadError, StartError, WatcherConfig, WorkerExit, WorkerId};

/// Asks the driver, without keeping it alive (a dropped handle still stops the cluster).
#[derive(Debug, Clone)]
pub(crate) struct Remote {
    commands: mpsc::WeakUnboundedSender<Command>,
    shared: Arc<Shared>,
}

/// The answer to a command, or `None` when there is no driver to ask.
pub(crate) struct Pending(Option<oneshot::Receiver<Outcome>>);

impl IntoFuture for Pending {
    type Output = Option<Outcome>;
    type IntoFuture = std::pin::Pin<Box<dyn Future<Output = Option<Outcome>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            match self.0 {
                Some(outcome) => outcome.await.ok(),
                None => None,
            }
        })
    }
}

impl Remote {
    pub(crate) fn new(commands: mpsc::WeakUnboundedSender<Command>, shared: Arc<Shared>) -> Self {
        Self { commands, shared }
    }

    pub(crate) fn span(&self) -> tracing::Span {
        self.shared.span.clone()
    }

    pub(crate) fn config(&self) -> Arc<WatcherConfig> {
        self.shared.config()
    }

    /// The cluster's name, watcher pid, balance mode, listeners and uptime, for status.
    pub(crate) fn about(&self) -> About {
        let config = self.shared.config();
        let listeners: Vec<String> = self
            .shared
            .provider
            .sockets()
            .iter()
            .map(|(address, fd)| {
                cluster_ipc::ListenAddress::of(&**fd)
                    .map_or_else(|_| address.to_string(), |a| a.to_string())
            })
            .collect();
        About::new(
            config.name.clone(),
            std::process::id(),
            config.balance.as_str().to_owned(),
            config.program_mode(),
            listeners,
            self.shared.created.elapsed(),
        )
    }

    /// The workers' application metrics (OpenMetrics families) and the families not merged;
    /// programs given listeners are read first.
    pub(crate) async fn app_metrics(&self) -> Option<(String, Vec<String>)> {
        let collection = &self.shared.app_metrics;
        crate::appmetrics::scrape_all(collection, crate::appmetrics::SCRAPE_PATIENCE).await;
        let metrics = collection.store.lock();
        (!metrics.is_empty()).then(|| metrics.render())
    }

    pub(crate) fn draining(&self) -> bool {
        self.shared.draining.load(Ordering::SeqCst)
    }

    /// Sends a command to the driver now (if it runs); nothing waits for it here.
    pub(crate) fn send(&self, command: Command) -> bool {
        let Some(commands) = self.commands.upgrade() else {
            return false;
        };
        self.shared.driver_running.load(Ordering::SeqCst) && commands.send(command).is_ok()
    }

    /// Sends a command whose answer is an [`Outcome`]; it takes effect now, and the future
    /// only reports it.
    fn ask(&self, make: impl FnOnce(oneshot::Sender<Outcome>) -> Command) -> Pending {
        let (reply, outcome) = oneshot::channel();
        match self.send(make(reply)) {
            true => Pending(Some(outcome)),
            false => Pending(None),
        }
    }

    /// A snapshot; with `measure`, each worker's memory and CPU too (a pass over `/proc`).
    pub(crate) async fn status(&self, measure: bool) -> ClusterStatus {
        let (reply, status) = oneshot::channel();
        if !self.send(Command::Status { measure, reply }) {
            return ClusterStatus::default();
        }
        let mut status = status.await.unwrap_or_default();
        status.log_lines_dropped = self.shared.log_drops.get().map(|count| count());
        status
    }

    pub(crate) fn start(&self, workers: usize) -> Pending {
        self.ask(|reply| Command::Start(workers, reply))
    }

    pub(crate) async fn add_worker(&self) -> Result<WorkerId, StartError> {
        match self.ask(Command::AddWorker).await {
            Some(Outcome::Added(Ok(id))) => Ok(id),
            Some(Outcome::Added(Err(failure))) => Err(error(&self.config(), failure)),
            _ => Err(StartError::NotRunning),
        }
    }

    pub(crate) async fn remove_worker(&self) -> Option<WorkerExit> {
        match self.ask(Command::RemoveWorker).await {
            Some(Outcome::Removed(exit)) => exit,
            _ => None,
        }
    }

    pub(crate) fn restart(&self) -> impl Future<Output = Result<(), StartError>> + use<> {
        let pending = self.ask(Command::Restart);
        let config = self.config();
        async move {
            match pending.await {
                Some(Outcome::Restarted(Ok(()))) => Ok(()),
                Some(Outcome::Restarted(Err(failure))) => Err(error(&config, failure)),
                _ => Err(StartError::NotRunning),
            }
        }
    }

    pub(crate) fn scale(
        &self,
        workers: usize,
    ) -> impl Future<Output = Result<(), StartError>> + use<> {
        let pending = self.ask(|reply| Command::Scale(workers, reply));
        let config = self.config();
        async move {
            match pending.await {
                Some(Outcome::Scaled(Ok(()))) => Ok(()),
                Some(Outcome::Scaled(Err(failure))) => Err(error(&config, failure)),
                _ => Err(StartError::NotRunning),
            }
        }
    }

    /// Runs `config` with `workers` workers from now on (see
    /// [`ClusterWatcher::reload`](crate::ClusterWatcher::reload)).
    pub(crate) fn reload(
        &self,
        config: WatcherConfig,
        workers: usize,
        changed: Vec<String>,
    ) -> impl Future<Output = Result<(), ReloadError>> + use<> {
        let fixed = self.config().fixed_for_life_change(&config);
        let config = Arc::new(config);
        let pending = match fixed {
            Some(_) => Pending(None),
            None => self.ask(|reply| Command::Reload {
                config: config.clone(),
                workers,
                changed,
                reply,
            }),
        };
        async move {
            if let Some(what) = fixed {
                return Err(ReloadError::NeedsUpgrade { what });
            }
            match pending.await {
                Some(Outcome::Reloaded(Ok(()))) => Ok(()),
                Some(Outcome::Reloaded(Err(
                    failure
                    @ (Failure::NotRunning | Failure::ZeroWorkers | Failure::ReloadUnderWay),
                ))) => Err(ReloadError::Refused(error(&config, failure))),
                Some(Outcome::Reloaded(Err(failure))) => {
                    Err(ReloadError::RolledBack(error(&config, failure)))
                }
                _ => Err(ReloadError::Refused(StartError::NotRunning)),
            }
        }
    }

    pub(crate) fn stop(&self) -> impl Future<Output = Vec<WorkerExit>> + use<> {
        let pending = self.ask(Command::Stop);
        async move {
            match pending.await {
                Some(Outcome::Stopped(exits)) => exits,
                _ => Vec::new(),
            }
        }
    }
}

/// The public error for a core failure.
pub(crate) fn error(config: &WatcherConfig, failure: Failure) -> StartError {
    failure.into_error(&config.program)
}
