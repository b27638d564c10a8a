//! [`Remote`]: how the control socket and the metrics endpoint ask the driver.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, oneshot};

use crate::core::Outcome;
use crate::driver::Command;
use crate::handle::{Pending, error};
use crate::shared::Shared;
use crate::{ClusterStatus, StartError};

/// What the control socket and the metrics endpoint use to ask the driver, without keeping
/// it alive (a dropped handle still stops the cluster).
#[derive(Debug, Clone)]
pub(crate) struct Remote {
    commands: mpsc::WeakUnboundedSender<Command>,
    shared: Arc<Shared>,
}

impl Remote {
    pub(crate) fn new(commands: mpsc::WeakUnboundedSender<Command>, shared: Arc<Shared>) -> Self {
        Self { commands, shared }
    }

    pub(crate) fn span(&self) -> tracing::Span {
        self.shared.span.clone()
    }

    /// The cluster's name, watcher pid, balance mode, listeners and uptime, for status.
    pub(crate) fn about(&self) -> serde_json::Map<String, serde_json::Value> {
        let config = &self.shared.config;
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
        let mut about = serde_json::Map::new();
        about.insert("name".into(), config.name.clone().into());
        about.insert("pid".into(), std::process::id().into());
        about.insert("balance".into(), config.balance.as_str().into());
        about.insert("program_mode".into(), config.program_mode().into());
        about.insert("listeners".into(), listeners.into());
        about.insert(
            "uptime".into(),
            self.shared.created.elapsed().as_secs_f64().into(),
        );
        about
    }

    pub(crate) fn draining(&self) -> bool {
        self.shared.draining.load(Ordering::SeqCst)
    }

    fn ask(&self, make: impl FnOnce(oneshot::Sender<Outcome>) -> Command) -> Pending {
        let Some(commands) = self.commands.upgrade() else {
            return Pending(None);
        };
        if !self.shared.driver_running.load(Ordering::SeqCst) {
            return Pending(None);
        }
        let (reply, outcome) = oneshot::channel();
        let _ = commands.send(make(reply));
        Pending(Some(outcome))
    }

    pub(crate) async fn status(&self) -> ClusterStatus {
        let Some(commands) = self.commands.upgrade() else {
            return ClusterStatus::default();
        };
        if !self.shared.driver_running.load(Ordering::SeqCst) {
            return ClusterStatus::default();
        }
        let (reply, status) = oneshot::channel();
        let _ = commands.send(Command::Status(reply));
        drop(commands);
        status.await.unwrap_or_default()
    }

    pub(crate) async fn restart(&self) -> Result<(), StartError> {
        match self.ask(Command::Restart).await {
            Some(Outcome::Restarted(Ok(()))) => Ok(()),
            Some(Outcome::Restarted(Err(failure))) => Err(error(&self.shared.config, failure)),
            _ => Err(StartError::NotRunning),
        }
    }

    pub(crate) async fn scale(&self, workers: usize) -> Result<(), StartError> {
        match self.ask(|reply| Command::Scale(workers, reply)).await {
            Some(Outcome::Scaled(Ok(()))) => Ok(()),
            Some(Outcome::Scaled(Err(failure))) => Err(error(&self.shared.config, failure)),
            _ => Err(StartError::NotRunning),
        }
    }
}
