//! The worker's live connection to its watcher: control traffic, heartbeat, the
//! server-socket factory, the counters it reports; the connections it sends and takes back
//! are `handoff.rs`'s.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use std::time::Duration;

use cluster_ipc::protocol::{WatcherToWorker, WorkerToWatcher};
use cluster_ipc::{Channel, ChannelSender, ServerSocketPipeFactory};
use fdpass::AsyncFdSocket;
use tokio::sync::{mpsc, watch};

use crate::WorkerError;
use crate::env::{Endpoint, WorkerEnv, bootstrap_error, worker_env};
pub(crate) use crate::handoff::{Handoff, Transferred};

/// Why the watcher side ended, as seen by the control reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WatcherState {
    Running,
    StopRequested,
    Gone,
}

#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) env: &'static WorkerEnv,
    pub(crate) control: ChannelSender<WorkerToWatcher>,
    pub(crate) state: watch::Receiver<WatcherState>,
    pub(crate) inbox: tokio::sync::Mutex<mpsc::UnboundedReceiver<Vec<u8>>>,
    pub(crate) listen: Option<ServerSocketPipeFactory>,
    /// Connections to and from the watcher (round-robin hand-offs, hand-backs).
    pub(crate) handoff: Handoff,
    /// Connections accepted and closed, reported to the watcher.
    pub(crate) counters: Counters,
    ready_sent: AtomicBool,
    pub(crate) defer_ready: AtomicBool,
}

static LINK: OnceLock<Result<Arc<Link>, String>> = OnceLock::new();

/// The link to the watcher, set up on first use (inside a tokio runtime).
pub(crate) fn link() -> Result<Arc<Link>, WorkerError> {
    if let Some(error) = bootstrap_error() {
        return Err(WorkerError::Bootstrap(error.clone()));
    }
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
    let counters = Counters::default();
    let heartbeat = control.clone();
    let interval = env.heartbeat;
    let accepted = counters.accepted.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reported = 0;
        loop {
            tick.tick().await;
            let total = accepted.load(Ordering::Relaxed);
            if total != reported {
                reported = total;
                if heartbeat
                    .send(&WorkerToWatcher::Accepted(total))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if heartbeat.send(&WorkerToWatcher::Heartbeat).await.is_err() {
                return;
            }
        }
    });
    if env.balance == cluster_ipc::protocol::Balance::LeastConn {
        let credit = control.clone();
        let (closed, changed) = (counters.closed.clone(), counters.closed_changed.clone());
        tokio::spawn(async move {
            let mut reported = 0;
            loop {
                changed.notified().await;
                let closed = closed.load(Ordering::Relaxed);
                if closed != reported {
                    reported = closed;
                    if credit.send(&WorkerToWatcher::Closed(closed)).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    let listen = env
        .take(Endpoint::Listen)
        .and_then(|fd| AsyncFdSocket::from_fd(fd).ok())
        .map(ServerSocketPipeFactory::new);
    let handoff = Handoff::new(env.take(Endpoint::Clients), env.balance.hands_off())?;
    Ok(Link {
        env,
        control,
        state,
        inbox: tokio::sync::Mutex::new(inbox),
        listen,
        handoff,
        counters,
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

/// What a worker counts and reports to its watcher.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Connections its listeners accepted, reported with heartbeats.
    pub(crate) accepted: Arc<AtomicU64>,
    /// Least-conn: connections from the watcher it closed (or handed back), reported soon
    /// after each close; closes while a report is on its way go in the next.
    pub(crate) closed: Arc<AtomicU64>,
    /// Woken at each close (least-conn).
    pub(crate) closed_changed: Arc<tokio::sync::Notify>,
}
