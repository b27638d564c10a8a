//! [`Listener`]: client connections, however the cluster delivers them.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cluster_ipc::{ListenAddress, ListenOptions, LocalServerSocketFactory, ServerSocketFactory};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, mpsc};

use crate::link::{Link, Transferred, link};
use crate::{ClientStream, WorkerError};

#[derive(Debug)]
enum Source {
    /// Accept on a listening socket (standalone, or a duplicate of the watcher's in `shared`,
    /// where connections handed over by stopping workers also arrive on the pipe).
    Accept(TcpListener, Option<TransferredSource>),
    /// Sockets the watcher accepted and sent over (`round-robin`), and handed-over ones.
    Transferred(TransferredSource),
}

/// The round-robin side of a [`Listener`]: reads the worker's client pipe directly (no task
/// in between), keeping what is for its address and passing the rest on.
#[derive(Debug)]
struct TransferredSource {
    address: ListenAddress,
    link: Arc<Link>,
    /// Connections for this address that another listener read off the pipe.
    passed_on: Mutex<mpsc::UnboundedReceiver<Transferred>>,
}

impl TransferredSource {
    async fn next(&self) -> io::Result<Transferred> {
        if let Some(client) = self.next_until_closed().await {
            return Ok(client);
        }
        // Nothing more will come from the watcher: only what another listener read for this
        // one (queued before the pipe closed, or passed on still) is left.
        let client = self.passed_on.lock().await.recv().await;
        let client = client.ok_or_else(watcher_gone)?;
        self.link.handoff.taken();
        Ok(client)
    }

    /// Like [`next`](Self::next), but `None` once the watcher closed the pipe and nothing it
    /// sent is left (`next` then waits for what another listener might pass on).
    async fn next_until_closed(&self) -> Option<Transferred> {
        let mut passed_on = match self.passed_on.try_lock() {
            Ok(queue) => queue,
            Err(_) => self.passed_on.lock().await,
        };
        let link = &*self.link;
        loop {
            if let Ok(client) = passed_on.try_recv() {
                link.handoff.taken();
                return Some(client);
            }
            if !link.handoff.has_pipe() || link.handoff.clients_closed() {
                return None;
            }
            tokio::select! {
                client = passed_on.recv() => {
                    let client = client?;
                    link.handoff.taken();
                    return Some(client);
                }
                ours = link.handoff.read_clients(&self.address) => {
                    if let Some(client) = ours {
                        return Some(client);
                    }
                }
            }
        }
    }

    /// Like [`next`](Self::next), but never fails: in shared mode, when the pipe is done, the
    /// listening socket is all that is left.
    async fn next_or_pending(&self) -> Transferred {
        match self.next().await {
            Ok(client) => client,
            Err(_) => std::future::pending().await,
        }
    }
}

impl Drop for TransferredSource {
    fn drop(&mut self) {
        self.link.handoff.remove_route(&self.address);
    }
}

fn watcher_gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the watcher is gone")
}

/// A source of TCP client connections. The same code serves standalone (it binds here), in
/// `shared` mode (it accepts on the watcher's socket) and in `round-robin` mode (the watcher
/// accepts and sends each connection over).
///
/// Accepted connections get `TCP_NODELAY` unless [`set_nodelay(false)`](Self::set_nodelay):
/// with Nagle's algorithm on, every keep-alive response waits for the delayed ACK (40 ms).
/// Out-of-descriptor errors back off (100 ms, growing to 1 s) instead of spinning.
#[derive(Debug)]
pub struct Listener {
    source: Source,
    local_addr: SocketAddr,
    nodelay: bool,
    /// The address as asked for, in a cluster: what a handed-back connection is for.
    address: Option<ListenAddress>,
    /// In a cluster: where accepted connections are counted.
    link: Option<Arc<Link>>,
}

/// Listens on `address` (`127.0.0.1:8080`, `[::1]:0`, `localhost:3000`): in a cluster on the
/// watcher's socket for that address (port 0 means one ephemeral port shared by every worker);
/// standalone on the socket inherited for it by socket activation (`LISTEN_FDS` for this
/// process: systemd, `systemd-socket-activate`, `systemfd`, `cluster --listen`), else by
/// binding here. In a cluster, the first successful `listen` also tells the
/// watcher this worker is ready, unless [`defer_ready`](crate::defer_ready) was called.
///
/// # Errors
/// [`WorkerError::Listen`] with the OS error when the address cannot be bound (in whichever
/// process binds it).
pub async fn listen(address: &str) -> Result<Listener, WorkerError> {
    let address: ListenAddress = address.parse()?;
    listen_with(&address, &ListenOptions::default()).await
}

/// [`listen`] with explicit [`ListenOptions`].
///
/// # Errors
/// As [`listen`]; Unix socket addresses are served through
/// [`server_socket_factory`](crate::server_socket_factory) instead.
pub async fn listen_with(
    address: &ListenAddress,
    options: &ListenOptions,
) -> Result<Listener, WorkerError> {
    let link = match link() {
        Ok(link) => link,
        Err(WorkerError::NotAWorker) => {
            // Socket-activated (systemd, systemd-socket-activate, systemfd, cluster
            // --listen): the inherited listener for this address, else a bind here.
            let listener = match crate::activation::take(address, None) {
                Some(fd) => cluster_ipc::Listener::from_fd(fd)?,
                None => LocalServerSocketFactory.listen(address, options).await?,
            };
            return Listener::from_accepting(listener);
        }
        Err(e) => return Err(e),
    };
    let factory = link
        .listen
        .as_ref()
        .ok_or(WorkerError::MissingSocket("listen"))?;
    let result = if !link.env.balance.hands_off() {
        // Reuseport: the watcher answers with this slot's own socket; accepting is the same.
        let mut listener = Listener::from_accepting(factory.listen(address, options).await?)?;
        // Connections handed over by stopping workers come through the pipe.
        let passed_on = Mutex::new(link.handoff.add_route(address.clone()));
        if let Source::Accept(_, transferred) = &mut listener.source {
            *transferred = Some(TransferredSource {
                address: address.clone(),
                link: link.clone(),
                passed_on,
            });
        }
        listener.address = Some(address.clone());
        listener.link = Some(link.clone());
        listener
    } else {
        // The watcher does the accepting and gives us only the address it bound: no
        // copy of its socket that this process could break for the whole cluster.
        let local_addr = match factory.bound_address(address, options).await? {
            ListenAddress::Tcp(addr) => addr,
            other => return Err(not_tcp(&other)),
        };
        let passed_on = Mutex::new(link.handoff.add_route(address.clone()));
        Listener {
            source: Source::Transferred(TransferredSource {
                address: address.clone(),
                link: link.clone(),
                passed_on,
            }),
            local_addr,
            nodelay: true,
            address: Some(address.clone()),
            link: Some(link.clone()),
        }
    };
    if !link.defer_ready.load(Ordering::SeqCst) {
        link.ready().await?;
    }
    Ok(result)
}

fn tcp_addr(listener: &cluster_ipc::Listener) -> Result<SocketAddr, WorkerError> {
    match listener.local_addr()? {
        ListenAddress::Tcp(addr) => Ok(addr),
        other => Err(not_tcp(&other)),
    }
}

fn not_tcp(address: &ListenAddress) -> WorkerError {
    let message = if address.is_datagram() {
        "listen() serves TCP; use udp_socket() for UDP and QUIC"
    } else {
        "listen() serves TCP; use server_socket_factory() for Unix sockets"
    };
    WorkerError::Io(io::Error::new(io::ErrorKind::Unsupported, message))
}

impl Listener {
    fn from_accepting(listener: cluster_ipc::Listener) -> Result<Self, WorkerError> {
        let local_addr = tcp_addr(&listener)?;
        let cluster_ipc::Listener::Tcp(tcp) = listener else {
            unreachable!("checked by tcp_addr")
        };
        Ok(Self {
            source: Source::Accept(tcp, None),
            local_addr,
            nodelay: true,
            address: None,
            link: None,
        })
    }

    /// The address as asked for, in a cluster (`None` standalone).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn cluster_address(&self) -> Option<&ListenAddress> {
        self.address.as_ref()
    }

    /// The address actually bound (the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Whether accepted connections get `TCP_NODELAY` (default `true`).
    pub fn set_nodelay(&mut self, nodelay: bool) {
        self.nodelay = nodelay;
    }

    /// A connection the watcher sent before it asked this worker to stop, once the serve
    /// loop stopped accepting: read off the client pipe only (never a new one from the
    /// listening socket), until the watcher closed the pipe. `None`: nothing more will come
    /// (or this listener gets nothing from the watcher).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) async fn accept_transferred(&self) -> Option<(ClientStream, SocketAddr)> {
        let source = match &self.source {
            Source::Accept(_, source) => source.as_ref()?,
            Source::Transferred(source) => source,
        };
        loop {
            let client = source.next_until_closed().await?;
            if let Ok((stream, peer)) = transferred(client, self.link.as_ref()) {
                return Some((self.adopt(stream), peer));
            }
        }
    }

    /// A connection just accepted or received, counted and set up.
    fn adopt(&self, mut stream: ClientStream) -> ClientStream {
        if self.nodelay {
            let _ = stream.set_nodelay(true);
        }
        if let Some(link) = &self.link {
            stream = stream.track_open(&link.counters);
        }
        if let Some(link) = &self.link
            && link.counters.accepted.fetch_add(1, Ordering::Relaxed) == 0
        {
            link.counters.first_accept.notify_one();
        }
        stream
    }

    /// The next client connection and its address.
    ///
    /// In `round-robin` mode, once the watcher has closed this worker's pipe (it is stopping
    /// it, or is gone) and every connection sent was taken, this waits for ever:
    /// [`await_termination`](crate::await_termination) resolves instead and says why, so a
    /// `select!` over both never sees a spurious error while it drains.
    ///
    /// # Errors
    /// An accept error that is not about one connection or a lack of resources.
    pub async fn accept(&self) -> io::Result<(ClientStream, SocketAddr)> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let accepted = match &self.source {
                Source::Accept(listener, None) => {
                    listener.accept().await.map(|(s, peer)| (s.into(), peer))
                }
                Source::Accept(listener, Some(source)) => tokio::select! {
                    accepted = listener.accept() => accepted.map(|(s, peer)| (s.into(), peer)),
                    client = source.next_or_pending() => transferred(client, self.link.as_ref()),
                },
                Source::Transferred(source) => {
                    transferred(source.next().await?, self.link.as_ref())
                }
            };
            match accepted {
                Ok((stream, peer)) => return Ok((self.adopt(stream), peer)),
                // The client gave up before we got to it: not our problem.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::NotConnected
                    ) => {}
                Err(e) if is_resource_error(&e) => {
                    tracing::warn!(error = %e, "accept: out of resources, backing off {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn transferred(
    client: Transferred,
    link: Option<&Arc<Link>>,
) -> io::Result<(ClientStream, SocketAddr)> {
    let peer = match client.peer {
        Some(peer) => peer,
        None => client.stream.peer_addr()?,
    };
    let stream = ClientStream::new(client.stream, client.prefix);
    // Least-conn: the watcher counts this connection open until we report it closed.
    match link.filter(|link| link.env.balance.traits().least_loaded) {
        Some(link) => Ok((stream.counted(&link.counters), peer)),
        None => Ok((stream, peer)),
    }
}

fn is_resource_error(e: &io::Error) -> bool {
    matches!(
        rustix::io::Errno::from_io_error(e),
        Some(
            rustix::io::Errno::MFILE
                | rustix::io::Errno::NFILE
                | rustix::io::Errno::NOBUFS
                | rustix::io::Errno::NOMEM
        )
    )
}

#[cfg(feature = "axum")]
impl axum::serve::Listener for Listener {
    type Io = ClientStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match Self::accept(self).await {
                Ok(accepted) => return accepted,
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    std::future::pending::<()>().await
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}
