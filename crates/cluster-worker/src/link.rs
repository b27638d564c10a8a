//! The worker's live connection to its watcher: control traffic, heartbeat, the server-socket
//! factory and, in round-robin mode, the stream of transferred client sockets.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use cluster_ipc::protocol::{ClientMeta, WatcherToWorker, WorkerToWatcher};
use cluster_ipc::{
    Channel, ChannelSender, ClientSocketReceivePipe, ListenAddress, ServerSocketPipeFactory,
};
use fdpass::AsyncFdSocket;
use tokio::sync::{mpsc, watch};

use crate::WorkerError;
use crate::env::{Endpoint, WorkerEnv, worker_env};

/// Why the watcher side ended, as seen by the control reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WatcherState {
    Running,
    StopRequested,
    Gone,
}

/// A client socket the watcher accepted, with the peer address it saw.
pub(crate) type Transferred = (tokio::net::TcpStream, Option<std::net::SocketAddr>);

/// Where transferred client sockets for one listening address go.
pub(crate) type ClientRoutes =
    Arc<Mutex<HashMap<ListenAddress, mpsc::UnboundedSender<Transferred>>>>;

#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) env: &'static WorkerEnv,
    pub(crate) control: ChannelSender<WorkerToWatcher>,
    pub(crate) state: watch::Receiver<WatcherState>,
    pub(crate) inbox: tokio::sync::Mutex<mpsc::UnboundedReceiver<Vec<u8>>>,
    pub(crate) listen: Option<ServerSocketPipeFactory>,
    pub(crate) routes: ClientRoutes,
    /// Connections received from the watcher but not yet taken by `accept` (round-robin).
    pub(crate) pending: Arc<AtomicUsize>,
    /// Set once the watcher closed the client pipe: nothing more will come.
    pub(crate) clients_closed: Arc<AtomicBool>,
    ready_sent: AtomicBool,
    pub(crate) defer_ready: AtomicBool,
}

static LINK: OnceLock<Result<Arc<Link>, String>> = OnceLock::new();

/// The link to the watcher, set up on first use (inside a tokio runtime).
pub(crate) fn link() -> Result<Arc<Link>, WorkerError> {
    let env = worker_env().ok_or(WorkerError::NotAWorker)?;
    LINK.get_or_init(|| connect(env).map(Arc::new).map_err(|e| e.to_string()))
        .clone()
        .map_err(|_| WorkerError::MissingSocket("control"))
}

fn adopt(
    env: &WorkerEnv,
    endpoint: Endpoint,
    name: &'static str,
) -> Result<AsyncFdSocket, WorkerError> {
    let fd = env.take(endpoint).ok_or(WorkerError::MissingSocket(name))?;
    AsyncFdSocket::from_fd(fd).map_err(|e| WorkerError::Io(std::io::Error::other(e)))
}

fn connect(env: &'static WorkerEnv) -> Result<Link, WorkerError> {
    let (control, events) =
        Channel::<WorkerToWatcher, WatcherToWorker>::new(adopt(env, Endpoint::Control, "control")?)
            .split();
    let (state_tx, state) = watch::channel(WatcherState::Running);
    let (inbox_tx, inbox) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(Some(WatcherToWorker::Stop)) => {
                    let _ = state_tx.send(WatcherState::StopRequested);
                }
                Ok(Some(WatcherToWorker::Message(bytes))) => {
                    let _ = inbox_tx.send(bytes);
                }
                Ok(None) | Err(_) => {
                    let _ = state_tx.send(WatcherState::Gone);
                    // The watcher is gone: give the program a moment to finish, then go too,
                    // so no orphan outlives its supervisor.
                    std::thread::spawn(|| {
                        std::thread::sleep(Duration::from_millis(1500));
                        std::process::exit(1);
                    });
                    return;
                }
            }
        }
    });
    let heartbeat = control.clone();
    let interval = env.heartbeat;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if heartbeat.send(&WorkerToWatcher::Heartbeat).await.is_err() {
                return;
            }
        }
    });
    let listen = env
        .take(Endpoint::Listen)
        .and_then(|fd| AsyncFdSocket::from_fd(fd).ok())
        .map(ServerSocketPipeFactory::new);
    let routes: ClientRoutes = Arc::default();
    let pending = Arc::new(AtomicUsize::new(0));
    let clients_closed = Arc::new(AtomicBool::new(false));
    if let Some(fd) = env.take(Endpoint::Clients) {
        let pipe = ClientSocketReceivePipe::<ClientMeta>::new(
            AsyncFdSocket::from_fd(fd).map_err(std::io::Error::other)?,
        );
        let (routes, pending, closed) = (routes.clone(), pending.clone(), clients_closed.clone());
        tokio::spawn(async move {
            while let Ok(Some(client)) = pipe.receive().await {
                let routes = routes.lock().unwrap_or_else(PoisonError::into_inner);
                match routes.get(&client.data.listener) {
                    Some(route) => {
                        pending.fetch_add(1, Ordering::SeqCst);
                        if route.send((client.socket, client.data.peer)).is_err() {
                            pending.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                    None => tracing::warn!(
                        listener = %client.data.listener,
                        "client for an address this worker does not listen on; closed"
                    ),
                }
            }
            closed.store(true, Ordering::SeqCst);
        });
    } else {
        clients_closed.store(true, Ordering::SeqCst);
    }
    Ok(Link {
        env,
        control,
        state,
        inbox: tokio::sync::Mutex::new(inbox),
        listen,
        routes,
        pending,
        clients_closed,
        ready_sent: AtomicBool::new(false),
        defer_ready: AtomicBool::new(false),
    })
}

impl Link {
    /// Waits (at most 2 s) until every connection the watcher already sent was accepted, so a
    /// worker stopping in round-robin mode serves them instead of dropping them.
    pub(crate) async fn drain_transferred(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while tokio::time::Instant::now() < deadline
            && !(self.clients_closed.load(Ordering::SeqCst)
                && self.pending.load(Ordering::SeqCst) == 0)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub(crate) async fn ready(&self) -> Result<(), WorkerError> {
        if !self.ready_sent.swap(true, Ordering::SeqCst) {
            self.control.send(&WorkerToWatcher::Ready).await?;
        }
        Ok(())
    }
}
