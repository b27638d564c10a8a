//! What the [`ClusterWatcher`](crate::ClusterWatcher) handle and the driver task share: the
//! configuration, the event and message streams, the listening sockets, the balancer, and
//! what the driver publishes for synchronous readers.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use parking_lot::{Mutex, MutexGuard};

use cluster_ipc::protocol::WatcherToWorker;
use cluster_ipc::{ChannelSender, ListenAddress, ServerSocketProvider};
use tokio::sync::{broadcast, mpsc};

use crate::balance::Balancer;
use crate::messages::{MessageSink, message_queue};
use crate::{Event, WatcherConfig, WorkerId, WorkerInfo, WorkerMessage};

/// What the handle and the driver share.
pub(crate) struct Shared {
    /// The configuration workers are started with: replaced by a reload (the driver applies
    /// it when the core says so). Read through [`config`](Self::config).
    pub(crate) config: parking_lot::RwLock<Arc<WatcherConfig>>,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) provider: ServerSocketProvider,
    pub(crate) balancer: Arc<Balancer>,
    /// The span current when the watcher was created; every task of the watcher runs in it.
    pub(crate) span: tracing::Span,
    pub(crate) messages: Mutex<Messages>,
    pub(crate) dropped_messages: Arc<AtomicU64>,
    pub(crate) published: Mutex<Published>,
    /// Which addresses each live worker asked to listen on.
    pub(crate) listens: Mutex<HashMap<WorkerId, HashSet<ListenAddress>>>,
    /// Program mode: the directory of the workers' notify sockets, made at the first start.
    pub(crate) notify: std::sync::OnceLock<crate::notify::NotifyDir>,
    /// When the watcher was made (its uptime, in status).
    pub(crate) created: std::time::Instant,
    /// Set once the driver task runs (commands are answered).
    pub(crate) driver_running: std::sync::atomic::AtomicBool,
    /// Set by the embedding program to report not-ready while it still serves (a stop delay).
    pub(crate) draining: std::sync::atomic::AtomicBool,
    /// The workers' application metrics, and (program mode) the port each worker serves
    /// its own on.
    pub(crate) app_metrics: Arc<crate::appmetrics::Collection>,
    /// Program mode's UDP and QUIC sockets.
    pub(crate) datagrams: crate::driver::datagrams::Datagrams,
    /// Set by the embedding program: how many of its log lines it dropped.
    pub(crate) log_drops: std::sync::OnceLock<Box<dyn Fn() -> u64 + Send + Sync>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config())
            .finish_non_exhaustive()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Program mode: the Unix socket files the watcher bound go with it.
        for listener in &self.config().listen {
            if let ListenAddress::Unix(path) = &listener.address {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Messages {
    pub(crate) receiver: Option<mpsc::Receiver<WorkerMessage>>,
    pub(crate) sink: Option<MessageSink>,
}

/// What the driver publishes whenever workers come, go or change phase.
#[derive(Debug, Default)]
pub(crate) struct Published {
    pub(crate) workers: Vec<WorkerInfo>,
    /// Each slot's current worker's control channel.
    pub(crate) current: HashMap<u32, ChannelSender<WatcherToWorker>>,
    /// Every live worker's control channel.
    pub(crate) controls: Vec<ChannelSender<WatcherToWorker>>,
}

impl Shared {
    /// The configuration workers are started with now.
    pub(crate) fn config(&self) -> Arc<WatcherConfig> {
        self.config.read().clone()
    }

    /// Workers started from now on run `config`.
    pub(crate) fn set_config(&self, config: Arc<WatcherConfig>) {
        *self.config.write() = config;
    }

    /// Which addresses each live worker asked to listen on.
    pub(crate) fn listens(&self) -> MutexGuard<'_, HashMap<WorkerId, HashSet<ListenAddress>>> {
        self.listens.lock()
    }

    pub(crate) fn published(&self) -> MutexGuard<'_, Published> {
        self.published.lock()
    }

    /// The sink workers' messages go to, while the cluster runs.
    pub(crate) fn message_sink(&self) -> Option<MessageSink> {
        self.messages.lock().sink.clone()
    }

    /// A new message stream for a new start, if the last one ended.
    pub(crate) fn open_messages(&self) {
        let mut messages = self.messages.lock();
        if messages.sink.is_none() {
            let (sink, receiver) = message_queue(self.dropped_messages.clone());
            *messages = Messages {
                receiver: Some(receiver),
                sink: Some(sink),
            };
        }
    }

    /// Ends the message stream (the cluster stopped; the readers are gone).
    pub(crate) fn close_messages(&self) {
        self.messages.lock().sink = None;
    }
}
