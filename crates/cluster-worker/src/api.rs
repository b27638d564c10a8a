//! Identity, readiness, messages and termination.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use cluster_ipc::protocol::WorkerToWatcher;
use cluster_ipc::{
    ListenAddress, ListenOptions, Listener, LocalServerSocketFactory, ServerSocketError,
    ServerSocketFactory,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::signal::unix::{SignalKind, signal};

use crate::WorkerError;
use crate::env::{bootstrap_error, worker_env};
use crate::link::{Link, WatcherState, link};

/// Whether this process runs under a cluster watcher.
pub fn is_worker() -> bool {
    worker_env().is_some() || bootstrap_error().is_some()
}

/// This worker's slot number, from 1, stable across restarts of the slot; `None` standalone.
pub fn id() -> Option<u32> {
    worker_env().map(|e| e.id)
}

/// How many times this slot has been started (1 for the first); `None` standalone.
pub fn generation() -> Option<u32> {
    worker_env().map(|e| e.generation)
}

/// This process's id.
pub fn pid() -> u32 {
    std::process::id()
}

/// Tells the watcher this worker can serve. Idempotent; a no-op standalone.
///
/// The watcher starts sending traffic (and a rolling restart retires the previous worker) only
/// after this. By default the first successful [`listen`](crate::listen) calls it; call
/// [`defer_ready`] before listening to warm up first.
///
/// # Errors
/// When the watcher is unreachable.
pub async fn ready() -> Result<(), WorkerError> {
    match link() {
        Ok(link) => link.ready().await,
        Err(WorkerError::NotAWorker) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Stops [`listen`](crate::listen) from implying readiness: the program calls [`ready`] itself.
pub fn defer_ready() {
    if let Ok(link) = link() {
        link.defer_ready.store(true, Ordering::SeqCst);
    }
}

/// Asks the watcher to stop this worker gracefully (amphp's `Cluster::shutdown()`); the
/// watcher answers with a stop request ([`Termination::StopRequested`]) and does not count
/// the exit as a crash. Standalone it returns [`WorkerError::NotAWorker`].
///
/// # Errors
/// [`WorkerError::NotAWorker`], or when the watcher is unreachable.
pub async fn shutdown() -> Result<(), WorkerError> {
    Ok(link()?.control.send(&WorkerToWatcher::Shutdown).await?)
}

/// What ended the wait of [`await_termination`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Termination {
    /// A signal: `"SIGTERM"`, `"SIGINT"`, `"SIGQUIT"` or `"SIGHUP"`.
    Signal(&'static str),
    /// The watcher asked this worker to stop (stop, restart, scale-down, or after
    /// [`shutdown`]).
    StopRequested,
    /// The watcher is gone; the process is ended shortly after in any case.
    WatcherGone,
}

/// Resolves when this process should stop, and says why. Works standalone (signals only).
///
/// In `round-robin` mode a stop request resolves only once every connection the watcher
/// already handed over was accepted (at most 2 s), so a program that stops accepting when
/// this resolves drops none of them; keep polling `accept` alongside (as in a `select!`).
pub async fn await_termination() -> Termination {
    let watcher = async {
        let Ok(link) = link() else {
            return std::future::pending().await;
        };
        let mut state = link.state.clone();
        loop {
            let current = *state.borrow_and_update();
            match current {
                WatcherState::StopRequested => {
                    link.handoff.drain_transferred().await;
                    return Termination::StopRequested;
                }
                WatcherState::Gone => return Termination::WatcherGone,
                WatcherState::Running => {}
            }
            if state.changed().await.is_err() {
                return Termination::WatcherGone;
            }
        }
    };
    let one = |kind: SignalKind, name: &'static str| async move {
        match signal(kind) {
            Ok(mut s) => {
                s.recv().await;
                Termination::Signal(name)
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        t = watcher => t,
        t = one(SignalKind::terminate(), "SIGTERM") => t,
        t = one(SignalKind::interrupt(), "SIGINT") => t,
        t = one(SignalKind::quit(), "SIGQUIT") => t,
        t = one(SignalKind::hangup(), "SIGHUP") => t,
    }
}

/// Typed messages to and from the watcher: sends `S`, receives `R` (postcard-encoded; the
/// watcher side must use the same types).
pub struct WorkerChannel<S, R> {
    link: Arc<Link>,
    _types: PhantomData<fn(S) -> R>,
}

impl<S, R> fmt::Debug for WorkerChannel<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerChannel").finish_non_exhaustive()
    }
}

/// The message channel to the watcher.
///
/// # Errors
/// [`WorkerError::NotAWorker`] standalone.
pub fn channel<S: Serialize, R: DeserializeOwned>() -> Result<WorkerChannel<S, R>, WorkerError> {
    Ok(WorkerChannel {
        link: link()?,
        _types: PhantomData,
    })
}

impl<S: Serialize, R: DeserializeOwned> WorkerChannel<S, R> {
    /// Sends a message to the watcher.
    ///
    /// # Errors
    /// When it cannot be encoded or the watcher is gone.
    pub async fn send(&self, message: &S) -> Result<(), WorkerError> {
        let bytes = postcard::to_stdvec(message).map_err(cluster_ipc::ChannelError::Encode)?;
        Ok(self
            .link
            .control
            .send(&WorkerToWatcher::Message(bytes))
            .await?)
    }

    /// The next message from the watcher; `None` once the watcher asked this worker to stop
    /// (at once, as amphp's `receive()`), or is gone.
    ///
    /// # Errors
    /// When a message does not decode as `R`.
    pub async fn recv(&self) -> Result<Option<R>, WorkerError> {
        let mut state = self.link.state.clone();
        let stopped = async move {
            loop {
                if *state.borrow_and_update() != WatcherState::Running {
                    return;
                }
                if state.changed().await.is_err() {
                    return;
                }
            }
        };
        let mut inbox = self.link.inbox.lock().await;
        let bytes = tokio::select! {
            // A stop ends the stream even when messages keep coming.
            biased;
            () = stopped => None,
            bytes = inbox.recv() => bytes,
        };
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let value = postcard::from_bytes(&bytes).map_err(cluster_ipc::ChannelError::Decode)?;
        Ok(Some(value))
    }
}

/// The [`ServerSocketFactory`] for raw listeners (TCP or Unix): the watcher's provider in a
/// cluster, local binding standalone.
pub fn server_socket_factory() -> WorkerSocketFactory {
    WorkerSocketFactory { link: link().ok() }
}

/// See [`server_socket_factory`].
#[derive(Debug, Clone)]
pub struct WorkerSocketFactory {
    link: Option<Arc<Link>>,
}

impl ServerSocketFactory for WorkerSocketFactory {
    async fn listen(
        &self,
        address: &ListenAddress,
        options: &ListenOptions,
    ) -> Result<Listener, ServerSocketError> {
        match self.link.as_ref().and_then(|l| l.listen.as_ref()) {
            Some(factory) => factory.listen(address, options).await,
            None => LocalServerSocketFactory.listen(address, options).await,
        }
    }
}
