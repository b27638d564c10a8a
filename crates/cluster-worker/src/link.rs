//! The worker's live connection to its watcher: control traffic, heartbeat, the server-socket
//! factory and, in round-robin mode, the stream of transferred client sockets.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use cluster_ipc::protocol::{ClientMeta, WatcherToWorker, WorkerToWatcher};
use cluster_ipc::{
    Channel, ChannelSender, ClientSocketReceivePipe, ClientSocketSendPipe, ListenAddress,
    ServerSocketPipeFactory, TransferredSocket,
};
use fdpass::AsyncFdSocket;
use tokio::sync::{mpsc, watch};

use crate::WorkerError;
use crate::env::{Endpoint, WorkerEnv, bootstrap_error, worker_env};

/// Why the watcher side ended, as seen by the control reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WatcherState {
    Running,
    StopRequested,
    Gone,
}

/// A client socket from the watcher: accepted there (round-robin), or handed over by a
/// stopping worker with the bytes it had read but not used.
pub(crate) struct Transferred {
    pub(crate) stream: tokio::net::TcpStream,
    pub(crate) peer: Option<std::net::SocketAddr>,
    pub(crate) prefix: Vec<u8>,
}

impl From<Client> for Transferred {
    fn from(client: Client) -> Self {
        Self {
            stream: client.socket,
            peer: client.data.peer,
            prefix: client.prefix,
        }
    }
}

/// A client socket as the watcher sent it.
pub(crate) type Client = TransferredSocket<ClientMeta, tokio::net::TcpStream>;

#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) env: &'static WorkerEnv,
    pub(crate) control: ChannelSender<WorkerToWatcher>,
    pub(crate) state: watch::Receiver<WatcherState>,
    pub(crate) inbox: tokio::sync::Mutex<mpsc::UnboundedReceiver<Vec<u8>>>,
    pub(crate) listen: Option<ServerSocketPipeFactory>,
    /// Client sockets from the watcher, for every address (round-robin). Each `accept`
    /// reads it directly and passes on what belongs to another listener.
    pub(crate) clients: Option<ClientSocketReceivePipe<ClientMeta>>,
    /// The same pipe the other way: idle connections handed back to the watcher when this
    /// worker stops, for a worker of the next generation.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    hand_back: Option<ClientSocketSendPipe<ClientMeta>>,
    /// Where a connection for another listener is passed on to.
    routes: Mutex<HashMap<ListenAddress, mpsc::UnboundedSender<Transferred>>>,
    /// Held while a listener reads the client pipe and routes what it read.
    reading: tokio::sync::Mutex<()>,
    /// Connections passed on to another listener but not yet taken by its `accept`.
    pending: AtomicUsize,
    /// Set once the watcher closed the client pipe: nothing more will come.
    clients_closed: AtomicBool,
    /// Woken whenever a transferred connection is taken or the pipe ends (the stop drain
    /// waits on it).
    progress: tokio::sync::Notify,
    /// A spare descriptor: while one more descriptor can be opened, there is room to
    /// receive a transferred connection (see [`Link::has_descriptor_room`]).
    spare: Option<std::os::fd::OwnedFd>,
    ready_sent: AtomicBool,
    pub(crate) defer_ready: AtomicBool,
}

static LINK: OnceLock<Result<Arc<Link>, String>> = OnceLock::new();

/// Connections this worker's listeners accepted, reported to the watcher with heartbeats.
pub(crate) static ACCEPTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Least-conn: connections from the watcher this worker closed (or handed back), reported
/// soon after each close; closes that happen while a report is on its way go in the next.
pub(crate) static CLOSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Woken at each close (least-conn).
pub(crate) static CLOSED_CHANGED: tokio::sync::Notify = tokio::sync::Notify::const_new();

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
    let heartbeat = control.clone();
    let interval = env.heartbeat;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reported = 0;
        loop {
            tick.tick().await;
            let accepted = ACCEPTED.load(Ordering::Relaxed);
            if accepted != reported {
                reported = accepted;
                if heartbeat
                    .send(&WorkerToWatcher::Accepted(accepted))
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
        tokio::spawn(async move {
            let mut reported = 0;
            loop {
                CLOSED_CHANGED.notified().await;
                let closed = CLOSED.load(Ordering::Relaxed);
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
    let clients_fd = env.take(Endpoint::Clients);
    let hand_back = clients_fd
        .as_ref()
        .and_then(|fd| rustix::io::fcntl_dupfd_cloexec(fd, 0).ok())
        .and_then(|fd| AsyncFdSocket::from_fd(fd).ok())
        .map(ClientSocketSendPipe::new);
    let clients = clients_fd
        .map(|fd| AsyncFdSocket::from_fd(fd).map(ClientSocketReceivePipe::new))
        .transpose()
        .map_err(std::io::Error::other)?;
    Ok(Link {
        env,
        control,
        state,
        inbox: tokio::sync::Mutex::new(inbox),
        listen,
        clients_closed: AtomicBool::new(clients.is_none()),
        clients,
        hand_back,
        routes: Mutex::default(),
        reading: tokio::sync::Mutex::new(()),
        pending: AtomicUsize::new(0),
        progress: tokio::sync::Notify::new(),
        spare: rustix::io::fcntl_dupfd_cloexec(std::io::stdin(), 0).ok(),
        ready_sent: AtomicBool::new(false),
        defer_ready: AtomicBool::new(false),
    })
}

impl Link {
    /// Waits (at most 2 s) until every connection the watcher already sent was accepted, so a
    /// worker stopping in round-robin mode serves them instead of dropping them. The
    /// program's `accept` loop reads them, so it must keep running until then.
    pub(crate) async fn drain_transferred(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                // Registered before looking, so a change in between is not missed.
                let progress = self.progress.notified();
                if self.all_transferred_taken() {
                    return;
                }
                progress.await;
            }
        })
        .await;
    }

    /// Registers a round-robin listener for `address`; connections for it that another
    /// listener's `accept` reads come through the returned queue.
    pub(crate) fn add_route(&self, address: ListenAddress) -> mpsc::UnboundedReceiver<Transferred> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(address, tx);
        rx
    }

    /// Reads the next connection off the client pipe: returns it if it is for `own`, passes
    /// it on to its listener otherwise (then `None`), and notes the end of the pipe.
    ///
    /// Reading and routing happen under one lock, so a listener that sees the end of the
    /// pipe knows every connection read before it is already counted in `pending`: the
    /// drain at stop cannot finish between another listener's read and its pass-on.
    /// Cancel-safe: it waits only for the lock and inside the cancel-safe `receive`.
    pub(crate) async fn read_clients(&self, own: &ListenAddress) -> Option<Transferred> {
        let pipe = self.clients.as_ref()?;
        // Uncontended (one listener, the usual case) without building an acquire future.
        let _reading = match self.reading.try_lock() {
            Ok(guard) => guard,
            Err(_) => self.reading.lock().await,
        };
        if self.clients_closed() {
            return None;
        }
        // Near the descriptor limit, a received descriptor would be discarded by the kernel
        // (MSG_CTRUNC) and its client lost: leave it queued instead. The watcher passes a
        // worker with a full queue over, so the connection goes to another worker. Only in
        // round-robin, where every connection comes this way: in shared mode the pipe carries
        // only the rare hand-over, and the probe would cost two system calls per accept.
        while self.env.balance.hands_off() && !self.has_descriptor_room() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match pipe.receive().await {
            Ok(Some(client)) if client.data.listener == *own => return Some(client.into()),
            Ok(Some(client)) => self.pass_on(client),
            Ok(None) => self.set_clients_closed(),
            Err(e) => match e.io_error() {
                Some(io) => {
                    tracing::warn!(error = %io, "client pipe failed; no more connections");
                    self.set_clients_closed();
                }
                // One bad message (a descriptor of the wrong kind, say) costs only itself.
                None => tracing::warn!(error = %e, "bad client transfer; skipped"),
            },
        }
        None
    }

    /// Passes a connection read by one listener on to the listener of its address.
    fn pass_on(&self, client: Client) {
        let routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        match routes.get(&client.data.listener) {
            Some(route) => {
                self.pending.fetch_add(1, Ordering::SeqCst);
                if route.send(client.into()).is_err() {
                    self.pending.fetch_sub(1, Ordering::SeqCst);
                }
            }
            None => tracing::warn!(
                listener = %client.data.listener,
                "client for an address this worker does not listen on; closed"
            ),
        }
    }

    /// No round-robin listener is open, or the pipe is at its end and every connection read
    /// from it was taken.
    fn all_transferred_taken(&self) -> bool {
        let no_listener = self
            .routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty();
        no_listener || (self.clients_closed() && self.pending.load(Ordering::SeqCst) == 0)
    }

    /// The round-robin listener for `address` is gone.
    pub(crate) fn remove_route(&self, address: &ListenAddress) {
        self.routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(address);
    }

    /// A passed-on connection was taken.
    pub(crate) fn taken(&self) {
        self.pending.fetch_sub(1, Ordering::SeqCst);
        self.progress.notify_waiters();
    }

    /// The watcher closed the client pipe (or it failed): nothing more will come.
    fn set_clients_closed(&self) {
        self.clients_closed.store(true, Ordering::SeqCst);
        self.progress.notify_waiters();
    }

    /// Whether this process can open one more descriptor, for the next connection: probed
    /// by duplicating the spare, which costs one `fcntl` and one `close`.
    fn has_descriptor_room(&self) -> bool {
        let Some(spare) = &self.spare else {
            return true;
        };
        match rustix::io::fcntl_dupfd_cloexec(spare, 0) {
            Ok(probe) => {
                drop(probe);
                true
            }
            Err(_) => false,
        }
    }

    pub(crate) fn clients_closed(&self) -> bool {
        self.clients_closed.load(Ordering::SeqCst)
    }

    /// Hands an idle connection back to the watcher, with the bytes read from it but not
    /// used, for a worker of the next generation to serve (the watcher asked this worker to
    /// stop). On failure the stream comes back, to be closed.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) async fn hand_back(
        &self,
        stream: tokio::net::TcpStream,
        listener: ListenAddress,
        prefix: &[u8],
    ) -> Result<(), tokio::net::TcpStream> {
        let Some(pipe) = &self.hand_back else {
            return Err(stream);
        };
        let meta = ClientMeta {
            listener,
            peer: stream.peer_addr().ok(),
        };
        let sent = tokio::time::timeout(
            Duration::from_secs(1),
            pipe.send_with_prefix(&stream, &meta, prefix),
        )
        .await;
        match sent {
            Ok(Ok(())) => Ok(()),
            _ => Err(stream),
        }
    }

    pub(crate) async fn ready(&self) -> Result<(), WorkerError> {
        if !self.ready_sent.swap(true, Ordering::SeqCst) {
            self.control.send(&WorkerToWatcher::Ready).await?;
        }
        Ok(())
    }
}
