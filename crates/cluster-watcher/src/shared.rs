//! What the [`ClusterWatcher`](crate::ClusterWatcher) handle and the driver task share: the
//! configuration, the event and message streams, the listening sockets, the balancer, and
//! what the driver publishes for synchronous readers.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use cluster_ipc::protocol::WatcherToWorker;
use cluster_ipc::{ChannelSender, ListenAddress, ServerSocketProvider};
use tokio::sync::{broadcast, mpsc};

use crate::balancer::Balancer;
use crate::driver::message_queue;
use crate::process::MessageSink;
use crate::{Event, StartError, WatcherConfig, WorkerId, WorkerInfo, WorkerMessage};

/// What the handle and the driver share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: WatcherConfig,
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
    /// Program mode: the socket workers report readiness to, bound at the first start.
    pub(crate) notify: std::sync::OnceLock<crate::notify::NotifySocket>,
    /// When the watcher was made (its uptime, in status).
    pub(crate) created: std::time::Instant,
    /// Set once the driver task runs (commands are answered).
    pub(crate) driver_running: std::sync::atomic::AtomicBool,
    /// Set by the embedding program to report not-ready while it still serves (a stop delay).
    pub(crate) draining: std::sync::atomic::AtomicBool,
    /// Set once a successor watcher took over the sockets: it steers the reuseport groups
    /// from then on, and this watcher only stops its workers.
    pub(crate) handed_over: std::sync::atomic::AtomicBool,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Program mode: the Unix socket files the watcher bound go with it.
        for listener in &self.config.listen {
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

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Program mode: the path of the notify socket, once bound.
    pub(crate) fn notify_path(&self) -> Option<&std::path::Path> {
        self.notify.get().map(crate::notify::NotifySocket::path)
    }

    /// Program mode: binds every listener (once; port 0 resolved here for good) and the
    /// notify socket.
    pub(crate) fn prepare_program_mode(&self) -> Result<(), StartError> {
        for listener in &self.config.listen {
            let options = cluster_ipc::ListenOptions::default();
            let fresh = !self
                .provider
                .sockets()
                .iter()
                .any(|(address, _)| *address == listener.address);
            // Reuseport: slot 1's socket now (port 0 resolved for the group), the others'
            // as their workers start.
            let socket = self
                .provider
                .socket_in_slot(&listener.address, &options, 1)?;
            set_nodelay(&socket);
            if let (ListenAddress::Unix(path), Some(mode)) = (&listener.address, listener.mode) {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
            }
            if fresh {
                let actual = ListenAddress::of(&*socket)
                    .map_or_else(|_| listener.address.to_string(), |a| a.to_string());
                tracing::info!(name = %listener.name, address = %actual, "listening on {actual}");
            }
        }
        if self.notify.get().is_none() {
            let socket = crate::notify::NotifySocket::bind()?;
            let _ = self.notify.set(socket);
        }
        Ok(())
    }

    /// Which addresses each live worker asked to listen on.
    pub(crate) fn listens(&self) -> MutexGuard<'_, HashMap<WorkerId, HashSet<ListenAddress>>> {
        lock(&self.listens)
    }

    pub(crate) fn published(&self) -> MutexGuard<'_, Published> {
        lock(&self.published)
    }

    /// The sink workers' messages go to, while the cluster runs.
    pub(crate) fn message_sink(&self) -> Option<MessageSink> {
        lock(&self.messages).sink.clone()
    }

    /// A new message stream for a new start, if the last one ended.
    pub(crate) fn open_messages(&self) {
        let mut messages = lock(&self.messages);
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
        lock(&self.messages).sink = None;
    }
}

/// Program mode: `TCP_NODELAY` on a listener, which accepted connections inherit: a server
/// that writes a response in two parts (head, body) would otherwise wait 40 ms for the
/// delayed ACK on every keep-alive request. gunicorn sets it on its listeners too.
pub(crate) fn set_nodelay(socket: &std::os::fd::OwnedFd) {
    if let Ok(ListenAddress::Tcp(_)) = ListenAddress::of(socket) {
        let _ = rustix::net::sockopt::set_tcp_nodelay(socket, true);
    }
}
