//! The connections a worker gets from its watcher and gives back: in round-robin and
//! least-conn every connection the watcher accepted, in every mode the idle keep-alive
//! connections a stopping worker of the previous generation handed over; and, when this
//! worker stops, its own idle connections handed back for the next generation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use cluster_ipc::protocol::ClientMeta;
use cluster_ipc::{
    ClientSocketReceivePipe, ClientSocketSendPipe, ListenAddress, TransferredSocket,
};
use fdpass::AsyncFdSocket;
use parking_lot::Mutex;
use tokio::sync::mpsc;

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

/// The worker's client pipe, both ways, and the routing of what it reads between the
/// worker's listeners.
#[derive(Debug)]
pub(crate) struct Handoff {
    /// Client sockets from the watcher, for every address (round-robin). Each `accept`
    /// reads it directly and passes on what belongs to another listener.
    clients: Option<ClientSocketReceivePipe<ClientMeta>>,
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
    /// receive a transferred connection (see [`Handoff::has_descriptor_room`]).
    spare: Option<std::os::fd::OwnedFd>,
    /// A probe found room and no descriptor was received since: a read that was cancelled
    /// (the serve loop's `select!` drops its accept at every finished connection) does not
    /// probe again, so a connection costs one probe.
    room_known: AtomicBool,
    /// Round-robin and least-conn: every connection comes this way (a descriptor is taken
    /// only with room for it).
    hands_off: bool,
}

impl Handoff {
    /// The pipe's two directions over the inherited descriptor (none: nothing comes).
    /// With `vouched`, the watcher vouches for every socket it sends (a connected stream,
    /// non-blocking): they are taken without the check's four system calls.
    pub(crate) fn new(
        pipe: Option<std::os::fd::OwnedFd>,
        hands_off: bool,
        vouched: bool,
    ) -> Result<Self, crate::WorkerError> {
        let hand_back = pipe
            .as_ref()
            .and_then(|fd| rustix::io::fcntl_dupfd_cloexec(fd, 0).ok())
            .and_then(|fd| AsyncFdSocket::from_fd(fd).ok())
            .map(ClientSocketSendPipe::new);
        let receive = |socket| match vouched {
            true => ClientSocketReceivePipe::new(socket).vouched(),
            false => ClientSocketReceivePipe::new(socket),
        };
        let clients = pipe
            .map(|fd| AsyncFdSocket::from_fd(fd).map(receive))
            .transpose()
            .map_err(std::io::Error::other)?;
        Ok(Self {
            clients_closed: AtomicBool::new(clients.is_none()),
            clients,
            hand_back,
            routes: Mutex::default(),
            reading: tokio::sync::Mutex::new(()),
            pending: AtomicUsize::new(0),
            progress: tokio::sync::Notify::new(),
            spare: rustix::io::fcntl_dupfd_cloexec(std::io::stdin(), 0).ok(),
            room_known: AtomicBool::new(false),
            hands_off,
        })
    }

    /// Whether the watcher sends this worker connections at all.
    pub(crate) fn has_pipe(&self) -> bool {
        self.clients.is_some()
    }

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
        self.routes.lock().insert(address, tx);
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
        while self.hands_off && !self.room_known.load(Ordering::Relaxed) {
            if self.has_descriptor_room() {
                self.room_known.store(true, Ordering::Relaxed);
            } else {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let received = pipe.receive().await;
        // Whatever came used the room (a bad message's descriptors too).
        self.room_known.store(false, Ordering::Relaxed);
        match received {
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
        let routes = self.routes.lock();
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
        let no_listener = self.routes.lock().is_empty();
        no_listener || (self.clients_closed() && self.pending.load(Ordering::SeqCst) == 0)
    }

    /// The round-robin listener for `address` is gone.
    pub(crate) fn remove_route(&self, address: &ListenAddress) {
        self.routes.lock().remove(address);
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
}
