//! The worker's live connection to its watcher: control traffic, heartbeat, the server-socket
//! factory and, in round-robin mode, the stream of transferred client sockets.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Where transferred client sockets for one listening address go.
pub(crate) type ClientRoutes =
    Arc<Mutex<HashMap<ListenAddress, mpsc::UnboundedSender<tokio::net::TcpStream>>>>;

#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) env: &'static WorkerEnv,
    pub(crate) control: ChannelSender<WorkerToWatcher>,
    pub(crate) state: watch::Receiver<WatcherState>,
    pub(crate) inbox: tokio::sync::Mutex<mpsc::UnboundedReceiver<Vec<u8>>>,
    pub(crate) listen: Option<ServerSocketPipeFactory>,
    pub(crate) routes: ClientRoutes,
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
    if let Some(fd) = env.take(Endpoint::Clients) {
        let pipe = ClientSocketReceivePipe::<ClientMeta>::new(
            AsyncFdSocket::from_fd(fd).map_err(std::io::Error::other)?,
        );
        let routes = routes.clone();
        tokio::spawn(async move {
            while let Ok(Some(client)) = pipe.receive().await {
                let routes = routes.lock().unwrap_or_else(PoisonError::into_inner);
                match routes.get(&client.data.listener) {
                    Some(route) => {
                        let _ = route.send(client.socket);
                    }
                    None => {
                        tracing::warn!(listener = %client.data.listener, "client for an address this worker does not listen on; closed")
                    }
                }
            }
        });
    }
    Ok(Link {
        env,
        control,
        state,
        inbox: tokio::sync::Mutex::new(inbox),
        listen,
        routes,
        ready_sent: AtomicBool::new(false),
        defer_ready: AtomicBool::new(false),
    })
}

impl Link {
    pub(crate) async fn ready(&self) -> Result<(), WorkerError> {
        if !self.ready_sent.swap(true, Ordering::SeqCst) {
            self.control.send(&WorkerToWatcher::Ready).await?;
        }
        Ok(())
    }
}
