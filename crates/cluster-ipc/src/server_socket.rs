//! Server-socket sharing: one process binds, every worker listens on a duplicate.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fdpass::AsyncFdSocket;
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType, sockopt};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::{ChannelError, ServerSocketError};

/// Where to listen: a TCP address (IPv4 or IPv6) or a Unix socket path.
///
/// Parsed from `127.0.0.1:8080`, `[::1]:0`, `tcp://127.0.0.1:80`, `localhost:3000`
/// (= `127.0.0.1:3000`), `unix:/run/app.sock`, `unix:///run/app.sock` or a path starting
/// with `/` or `./`.
///
/// ```
/// use cluster_ipc::ListenAddress;
/// let tcp: ListenAddress = "localhost:0".parse()?;
/// assert_eq!(tcp.to_string(), "127.0.0.1:0");
/// let unix: ListenAddress = "unix:///tmp/app.sock".parse()?;
/// assert_eq!(unix.to_string(), "unix:/tmp/app.sock");
/// assert!("999.1.1.1:80".parse::<ListenAddress>().is_err());
/// # Ok::<(), cluster_ipc::ServerSocketError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ListenAddress {
    /// A TCP socket address.
    Tcp(SocketAddr),
    /// A Unix stream socket at this path.
    Unix(PathBuf),
}

impl FromStr for ListenAddress {
    type Err = ServerSocketError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(ServerSocketError::InvalidAddress(s.to_owned()));
            }
            return Ok(Self::Unix(path.into()));
        }
        if s.starts_with('/') || s.starts_with("./") {
            return Ok(Self::Unix(s.into()));
        }
        let tcp = s.strip_prefix("tcp://").unwrap_or(s);
        if let Some(port) = tcp.strip_prefix("localhost:") {
            let port = port
                .parse()
                .map_err(|_| ServerSocketError::InvalidAddress(s.to_owned()))?;
            return Ok(Self::Tcp(SocketAddr::from(([127, 0, 0, 1], port))));
        }
        tcp.parse()
            .map(Self::Tcp)
            .map_err(|_| ServerSocketError::InvalidAddress(s.to_owned()))
    }
}

impl ListenAddress {
    /// The address a socket is bound to (with the real port when port 0 was asked for).
    ///
    /// # Errors
    /// When `getsockname` fails or the socket is neither IP nor Unix.
    pub fn of(socket: impl AsFd) -> io::Result<Self> {
        let addr = rustix::net::getsockname(socket)?;
        if let Ok(unix) = SocketAddrUnix::try_from(addr.clone()) {
            return Ok(Self::Unix(
                unix.path()
                    .map(|p| PathBuf::from(p.to_string_lossy().into_owned()))
                    .unwrap_or_default(),
            ));
        }
        SocketAddr::try_from(addr)
            .map(Self::Tcp)
            .map_err(|_| io::Error::other("not an IP or Unix socket"))
    }

    /// Whether a socket bound to this address serves a request for `wanted`: the same
    /// address, or port 0 on the same IP (what an inherited socket answers for).
    pub fn serves(&self, wanted: &Self) -> bool {
        match (self, wanted) {
            (Self::Tcp(local), Self::Tcp(wanted)) => {
                local == wanted || (wanted.port() == 0 && local.ip() == wanted.ip())
            }
            (local, wanted) => local == wanted,
        }
    }
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// How to bind and listen. Equal options on an equal address share one socket.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ListenOptions {
    /// `listen()` backlog (default 1024; the kernel caps it at `net.core.somaxconn`).
    pub backlog: u32,
    /// `SO_REUSEPORT` (default off: one shared queue balances by idle workers).
    pub reuse_port: bool,
    /// `IPV6_V6ONLY` for IPv6 addresses (default on, so `[::]` does not also take IPv4).
    pub ipv6_only: bool,
}

impl Default for ListenOptions {
    fn default() -> Self {
        Self {
            backlog: 1024,
            reuse_port: false,
            ipv6_only: true,
        }
    }
}

/// A listening socket, registered with tokio.
#[derive(Debug)]
pub enum Listener {
    /// A TCP listener.
    Tcp(tokio::net::TcpListener),
    /// A Unix stream listener.
    Unix(tokio::net::UnixListener),
}

impl Listener {
    /// Wraps a listening descriptor of either kind.
    ///
    /// # Errors
    /// When it is neither a listening TCP nor Unix stream socket (it is closed), or cannot be
    /// registered with the runtime.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, ServerSocketError> {
        let kind = fdpass::SocketKind::of(&fd).map_err(ServerSocketError::Register)?;
        let adopted = if kind.domain == AddressFamily::UNIX {
            fdpass::into_socket(fd).map(Self::Unix)
        } else {
            fdpass::into_socket(fd).map(Self::Tcp)
        };
        adopted.map_err(|e| ServerSocketError::Channel(ChannelError::SocketKind(e)))
    }

    /// The address actually bound (with the real port when port 0 was asked for).
    ///
    /// # Errors
    /// When `getsockname` fails.
    pub fn local_addr(&self) -> io::Result<ListenAddress> {
        match self {
            Self::Tcp(l) => l.local_addr().map(ListenAddress::Tcp),
            Self::Unix(l) => {
                let addr = l.local_addr()?;
                Ok(ListenAddress::Unix(
                    addr.as_pathname().map(PathBuf::from).unwrap_or_default(),
                ))
            }
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Self::Tcp(l) => l.as_fd(),
            Self::Unix(l) => l.as_fd(),
        }
    }
}

/// Something that produces listening sockets: bound here ([`LocalServerSocketFactory`]) or
/// obtained from another process ([`ServerSocketPipeFactory`]). Code written against this
/// trait runs unchanged in a cluster and standalone.
pub trait ServerSocketFactory {
    /// A listener on `address` with `options`.
    fn listen(
        &self,
        address: &ListenAddress,
        options: &ListenOptions,
    ) -> impl Future<Output = Result<Listener, ServerSocketError>> + Send;
}

/// Binds in this process.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalServerSocketFactory;

impl ServerSocketFactory for LocalServerSocketFactory {
    async fn listen(
        &self,
        address: &ListenAddress,
        options: &ListenOptions,
    ) -> Result<Listener, ServerSocketError> {
        let fd = bind_listener(address, options)?;
        Listener::from_fd(fd)
    }
}

/// Binds and listens on `address`, close-on-exec and non-blocking.
///
/// TCP sockets get `SO_REUSEADDR` so a restart is not refused while old connections sit in
/// `TIME_WAIT`. A Unix path left behind by a dead process (nobody accepts on it) is replaced;
/// a live one is `EADDRINUSE`.
///
/// # Errors
/// [`ServerSocketError::Bind`] with the OS error.
pub fn bind_listener(
    address: &ListenAddress,
    options: &ListenOptions,
) -> Result<OwnedFd, ServerSocketError> {
    bind_inner(address, options).map_err(|source| ServerSocketError::Bind {
        address: address.to_string(),
        source,
    })
}

fn bind_inner(address: &ListenAddress, options: &ListenOptions) -> io::Result<OwnedFd> {
    let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
    let backlog = i32::try_from(options.backlog).unwrap_or(i32::MAX);
    match address {
        ListenAddress::Tcp(addr) => {
            let family = if addr.is_ipv4() {
                AddressFamily::INET
            } else {
                AddressFamily::INET6
            };
            let fd = rustix::net::socket_with(family, SocketType::STREAM, flags, None)?;
            sockopt::set_socket_reuseaddr(&fd, true)?;
            if options.reuse_port {
                sockopt::set_socket_reuseport(&fd, true)?;
            }
            if addr.is_ipv6() {
                sockopt::set_ipv6_v6only(&fd, options.ipv6_only)?;
            }
            rustix::net::bind(&fd, addr)?;
            rustix::net::listen(&fd, backlog)?;
            Ok(fd)
        }
        ListenAddress::Unix(path) => {
            let unix = SocketAddrUnix::new(path.as_path())?;
            let fd =
                rustix::net::socket_with(AddressFamily::UNIX, SocketType::STREAM, flags, None)?;
            match rustix::net::bind(&fd, &unix) {
                Err(Errno::ADDRINUSE) if is_stale(&unix) => {
                    std::fs::remove_file(path)?;
                    rustix::net::bind(&fd, &unix)?;
                }
                other => other?,
            }
            rustix::net::listen(&fd, backlog)?;
            Ok(fd)
        }
    }
}

/// A Unix socket path nobody listens on any more.
fn is_stale(address: &SocketAddrUnix) -> bool {
    let Ok(probe) = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    ) else {
        return false;
    };
    rustix::net::connect(&probe, address) == Err(Errno::CONNREFUSED)
}

/// A request from a [`ServerSocketPipeFactory`].
#[derive(Debug, Serialize, Deserialize)]
struct ListenRequest {
    address: ListenAddress,
    options: ListenOptions,
}

/// The provider's answer; `Bound` comes with the descriptor, `BoundHere` (a provider that
/// accepts itself, as a round-robin watcher) says only which address was bound.
#[derive(Debug, Serialize, Deserialize)]
enum ListenReply {
    Bound,
    BoundHere(ListenAddress),
    Failed {
        os_error: Option<i32>,
        message: String,
    },
}

/// Which socket a request gets: equal address and options share one socket, except that a
/// per-slot provider binds one socket per slot (`Some(slot)`) for TCP addresses.
type SocketKey = (ListenAddress, ListenOptions, Option<u32>);

/// Listening sockets by what was asked for.
type SocketTable = HashMap<SocketKey, Arc<OwnedFd>>;

/// What a listening socket was bound for, as a successor needs to know to take it over
/// ([`ServerSocketProvider::export`], [`ServerSocketProvider::import`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketSpec {
    /// The address as asked for (port 0 included: the socket knows its real port).
    pub address: ListenAddress,
    /// The options as asked for.
    pub options: ListenOptions,
    /// The slot of a per-slot socket.
    pub slot: Option<u32>,
}

/// A `SO_REUSEPORT` group of per-slot sockets: the slots in the kernel's order (the order of
/// `listen()`, with the last member moved into the place of one that closed).
#[derive(Debug, Clone)]
pub struct ReuseportGroup {
    /// The address as asked for.
    pub address: ListenAddress,
    /// Each member's slot and socket, in the kernel's order: a steering program returns
    /// positions in this list.
    pub members: Vec<(u32, Arc<OwnedFd>)>,
}

#[derive(Debug, Default)]
struct Table {
    sockets: SocketTable,
    /// Per-slot mode: each group's slots in the kernel's order.
    order: HashMap<(ListenAddress, ListenOptions), Vec<u32>>,
}

impl Table {
    /// Distinct addresses (with options) bound: what the socket limit counts.
    fn distinct(&self) -> usize {
        let mut seen = std::collections::HashSet::new();
        self.sockets
            .keys()
            .filter(|(address, options, _)| seen.insert((address, options)))
            .count()
    }

    /// A per-slot socket joined its group (called `listen()`): it takes the last place.
    fn join_group(&mut self, address: &ListenAddress, options: &ListenOptions, slot: u32) {
        let order = self
            .order
            .entry((address.clone(), options.clone()))
            .or_default();
        if !order.contains(&slot) {
            order.push(slot);
        }
    }

    /// Forgets a per-slot socket's place in its group, as the kernel does when it closes: the
    /// last member takes its place.
    fn leave_group(&mut self, address: &ListenAddress, options: &ListenOptions, slot: u32) {
        let key = (address.clone(), options.clone());
        if let Some(order) = self.order.get_mut(&key)
            && let Some(position) = order.iter().position(|&s| s == slot)
        {
            order.swap_remove(position);
            if order.is_empty() {
                self.order.remove(&key);
            }
        }
    }
}

/// Binds each requested address once and hands every requester a duplicate of the same
/// listening socket (amphp's `ServerSocketPipeProvider`), or, per slot
/// ([`per_slot`](Self::per_slot)), one `SO_REUSEPORT` socket for each slot.
///
/// The provider owns the sockets for its whole life, so workers come and go without the
/// listening socket ever closing: connections wait in the kernel's backlog meanwhile. Port 0
/// is bound once, so every worker shares the same ephemeral port.
#[derive(Debug, Clone)]
pub struct ServerSocketProvider {
    table: Arc<Mutex<Table>>,
    /// Listening sockets this process inherited (socket activation), not asked for yet.
    adopted: Arc<Mutex<Vec<(ListenAddress, OwnedFd)>>>,
    max_sockets: usize,
    descriptors: bool,
    per_slot: bool,
}

impl Default for ServerSocketProvider {
    fn default() -> Self {
        Self {
            table: Arc::default(),
            adopted: Arc::default(),
            max_sockets: Self::DEFAULT_MAX_SOCKETS,
            descriptors: true,
            per_slot: false,
        }
    }
}

impl ServerSocketProvider {
    /// How many distinct listening addresses a provider binds at most by default:
    /// requesters cannot make it hold descriptors and ports without bound.
    pub const DEFAULT_MAX_SOCKETS: usize = 64;

    /// An empty provider.
    pub fn new() -> Self {
        Self::default()
    }

    /// Binds at most `max` distinct addresses; further requests fail (default
    /// [`DEFAULT_MAX_SOCKETS`](Self::DEFAULT_MAX_SOCKETS)).
    #[must_use]
    pub fn with_max_sockets(mut self, max: usize) -> Self {
        self.max_sockets = max;
        self
    }

    /// Answers requests with the bound address only, never a descriptor: for a provider
    /// that accepts on the sockets itself and hands connections over, so no requester can
    /// change the socket it accepts on (clear `O_NONBLOCK`, `shutdown` it).
    #[must_use]
    pub fn without_descriptors(mut self) -> Self {
        self.descriptors = false;
        self
    }

    /// Binds one `SO_REUSEPORT` socket per slot for each TCP address
    /// ([`socket_in_slot`](Self::socket_in_slot), [`serve_slot`](Self::serve_slot)): the
    /// kernel spreads new connections over the slots' sockets, and each socket's queue
    /// belongs to one slot. Unix addresses still get one socket for all.
    #[must_use]
    pub fn per_slot(mut self) -> Self {
        self.per_slot = true;
        self
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes over a listening socket this process inherited (socket activation: systemd,
    /// `systemd-socket-activate`): a request for its address (or for port 0 on its IP) gets
    /// it instead of a new bind, so the socket, and the connections waiting on it, outlive
    /// this process's restarts. Returns the address it listens on.
    ///
    /// # Errors
    /// When it is not a listening socket.
    pub fn adopt(&self, fd: OwnedFd) -> io::Result<ListenAddress> {
        if !sockopt::socket_acceptconn(&fd)? {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an inherited descriptor that is not a listening socket",
            ));
        }
        rustix::fs::fcntl_setfl(
            &fd,
            rustix::fs::fcntl_getfl(&fd)? | rustix::fs::OFlags::NONBLOCK,
        )?;
        let address = ListenAddress::of(&fd)?;
        self.adopted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((address.clone(), fd));
        Ok(address)
    }

    /// Inherited sockets no request has asked for (yet).
    pub fn unused_adopted(&self) -> Vec<ListenAddress> {
        let adopted = self.adopted.lock().unwrap_or_else(PoisonError::into_inner);
        adopted.iter().map(|(address, _)| address.clone()).collect()
    }

    /// The inherited socket for `address`, taken out of the adopted list.
    fn take_adopted(&self, address: &ListenAddress) -> Option<OwnedFd> {
        let mut adopted = self.adopted.lock().unwrap_or_else(PoisonError::into_inner);
        let index = adopted
            .iter()
            .position(|(local, _)| local.serves(address))?;
        Some(adopted.remove(index).1)
    }

    /// Forgets (and closes, once nobody else holds it) every socket bound for `address`.
    pub fn release(&self, address: &ListenAddress) -> bool {
        let mut table = self.table();
        let before = table.sockets.len();
        table.sockets.retain(|(a, _, _), _| a != address);
        table.order.retain(|(a, _), _| a != address);
        table.sockets.len() != before
    }

    /// Forgets (and closes, once nobody else holds them) the per-slot sockets of `slot`;
    /// the other slots' sockets move in their groups as the kernel moves them. Returns the
    /// addresses they were bound for.
    pub fn release_slot(&self, slot: u32) -> Vec<ListenAddress> {
        let mut table = self.table();
        let keys: Vec<SocketKey> = table
            .sockets
            .keys()
            .filter(|(_, _, s)| *s == Some(slot))
            .cloned()
            .collect();
        for (address, options, _) in &keys {
            table.leave_group(address, options, slot);
        }
        for key in &keys {
            table.sockets.remove(key);
        }
        keys.into_iter().map(|(address, _, _)| address).collect()
    }

    /// Binds `address` anew (in `slot`, for a per-slot socket), replacing the socket held
    /// for it (one that a requester broke, say); requests from then on get the new socket.
    /// The new socket takes the old one's actual address, so port 0 keeps the port it was
    /// given.
    ///
    /// # Errors
    /// [`ServerSocketError::Bind`]; the old socket stays.
    pub fn rebind(
        &self,
        address: &ListenAddress,
        options: &ListenOptions,
        slot: Option<u32>,
    ) -> Result<Arc<OwnedFd>, ServerSocketError> {
        let key = (address.clone(), options.clone(), slot);
        let mut table = self.table();
        let actual = table
            .sockets
            .get(&key)
            .and_then(|old| ListenAddress::of(&**old).ok())
            .unwrap_or_else(|| address.clone());
        let mut bind_options = options.clone();
        if let Some(slot) = slot {
            bind_options.reuse_port = true;
            table.leave_group(address, options, slot);
        }
        // A socket that stopped listening has left its group already (the kernel removes
        // it at `shutdown`), so it leaves the order whether or not the new bind works.
        let fd = Arc::new(bind_listener(&actual, &bind_options)?);
        if let Some(slot) = slot {
            table.join_group(address, options, slot);
        }
        table.sockets.insert(key, fd.clone());
        Ok(fd)
    }

    /// The listening socket for `address` and `options`, bound on first use.
    ///
    /// # Errors
    /// [`ServerSocketError::Bind`] with the OS error; the next call tries again.
    pub fn socket(
        &self,
        address: &ListenAddress,
        options: &ListenOptions,
    ) -> Result<Arc<OwnedFd>, ServerSocketError> {
        let mut table = self.table();
        let key = (address.clone(), options.clone(), None);
        if let Some(fd) = table.sockets.get(&key) {
            return Ok(fd.clone());
        }
        if let Some(fd) = self.take_adopted(address) {
            let fd = Arc::new(fd);
            table.sockets.insert(key, fd.clone());
            return Ok(fd);
        }
        self.check_room(&table, address)?;
        let fd = Arc::new(bind_listener(address, options)?);
        table.sockets.insert(key, fd.clone());
        Ok(fd)
    }

    /// Slot `slot`'s `SO_REUSEPORT` socket for `address` and `options`, bound on first use
    /// (on the port the group's first socket got, for port 0). A per-slot provider only, and
    /// TCP only; otherwise the one socket for everyone ([`socket`](Self::socket)).
    ///
    /// # Errors
    /// [`ServerSocketError::Bind`] with the OS error; the next call tries again.
    pub fn socket_in_slot(
        &self,
        address: &ListenAddress,
        options: &ListenOptions,
        slot: u32,
    ) -> Result<Arc<OwnedFd>, ServerSocketError> {
        if !self.per_slot || !matches!(address, ListenAddress::Tcp(_)) {
            return self.socket(address, options);
        }
        let mut table = self.table();
        let key = (address.clone(), options.clone(), Some(slot));
        if let Some(fd) = table.sockets.get(&key) {
            return Ok(fd.clone());
        }
        // A sibling's actual address: port 0 resolves once for the whole group.
        let sibling = table
            .sockets
            .iter()
            .find(|((a, o, s), _)| a == address && o == options && s.is_some())
            .and_then(|(_, fd)| ListenAddress::of(&**fd).ok());
        if sibling.is_none() {
            self.check_room(&table, address)?;
        }
        let mut bind_options = options.clone();
        bind_options.reuse_port = true;
        let fd = Arc::new(bind_listener(
            sibling.as_ref().unwrap_or(address),
            &bind_options,
        )?);
        table.join_group(address, options, slot);
        table.sockets.insert(key, fd.clone());
        Ok(fd)
    }

    fn check_room(&self, table: &Table, address: &ListenAddress) -> Result<(), ServerSocketError> {
        if table.distinct() >= self.max_sockets {
            return Err(ServerSocketError::Bind {
                address: address.to_string(),
                source: io::Error::other(format!(
                    "this provider binds at most {} sockets",
                    self.max_sockets
                )),
            });
        }
        Ok(())
    }

    /// Every socket bound so far, for a successor process to [`import`](Self::import):
    /// what each was asked for, with the socket. Per-slot sockets come in their group's
    /// kernel order, so importing them in this order keeps the order.
    pub fn export(&self) -> Vec<(SocketSpec, Arc<OwnedFd>)> {
        let table = self.table();
        let mut exported: Vec<(SocketSpec, Arc<OwnedFd>)> = table
            .sockets
            .iter()
            .filter(|((_, _, slot), _)| slot.is_none())
            .map(|((address, options, _), fd)| {
                let spec = SocketSpec {
                    address: address.clone(),
                    options: options.clone(),
                    slot: None,
                };
                (spec, fd.clone())
            })
            .collect();
        for ((address, options), order) in &table.order {
            for &slot in order {
                let key = (address.clone(), options.clone(), Some(slot));
                if let Some(fd) = table.sockets.get(&key) {
                    let spec = SocketSpec {
                        address: address.clone(),
                        options: options.clone(),
                        slot: Some(slot),
                    };
                    exported.push((spec, fd.clone()));
                }
            }
        }
        exported
    }

    /// Takes a socket a predecessor [`export`](Self::export)ed: requests for `spec` get it
    /// from now on, as if this provider had bound it.
    ///
    /// # Errors
    /// When it is not a listening socket.
    pub fn import(&self, spec: SocketSpec, fd: OwnedFd) -> io::Result<()> {
        if !sockopt::socket_acceptconn(&fd)? {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a handed-over descriptor that is not a listening socket",
            ));
        }
        let mut table = self.table();
        if let Some(slot) = spec.slot {
            table.join_group(&spec.address, &spec.options, slot);
        }
        table
            .sockets
            .insert((spec.address, spec.options, spec.slot), Arc::new(fd));
        Ok(())
    }

    /// Per-slot mode: every group of per-slot sockets, members in the kernel's order.
    pub fn reuseport_groups(&self) -> Vec<ReuseportGroup> {
        let table = self.table();
        table
            .order
            .iter()
            .map(|((address, options), order)| ReuseportGroup {
                address: address.clone(),
                members: order
                    .iter()
                    .filter_map(|&slot| {
                        let key = (address.clone(), options.clone(), Some(slot));
                        table.sockets.get(&key).map(|fd| (slot, fd.clone()))
                    })
                    .collect(),
            })
            .collect()
    }

    /// Every socket bound so far, with its address as asked for.
    pub fn sockets(&self) -> Vec<(ListenAddress, Arc<OwnedFd>)> {
        self.sockets_with_options()
            .into_iter()
            .map(|(address, _, _, fd)| (address, fd))
            .collect()
    }

    /// Every socket bound so far, with its address and options as asked for, and its slot
    /// for a per-slot socket.
    pub fn sockets_with_options(
        &self,
    ) -> Vec<(ListenAddress, ListenOptions, Option<u32>, Arc<OwnedFd>)> {
        let table = self.table();
        table
            .sockets
            .iter()
            .map(|((address, options, slot), fd)| {
                (address.clone(), options.clone(), *slot, fd.clone())
            })
            .collect()
    }

    /// Answers listen requests arriving on `socket` until the requester closes it. A failed
    /// bind is answered with the OS error and the loop goes on.
    ///
    /// # Errors
    /// [`ChannelError`] when the requester sends something that is not a request, or the
    /// connection fails; the requester is then disconnected.
    pub async fn serve(&self, socket: &AsyncFdSocket) -> Result<(), ChannelError> {
        self.serve_with(socket, |_, _| {}).await
    }

    /// Like [`serve`](Self::serve), calling `on_bound` with each address handed out (a
    /// supervisor uses it to learn which worker listens where).
    ///
    /// # Errors
    /// As [`serve`](Self::serve).
    pub async fn serve_with(
        &self,
        socket: &AsyncFdSocket,
        on_bound: impl FnMut(&ListenAddress, &Arc<OwnedFd>),
    ) -> Result<(), ChannelError> {
        self.serve_slot(socket, None, on_bound).await
    }

    /// Like [`serve_with`](Self::serve_with) for the worker of `slot`: a per-slot provider
    /// answers with that slot's socket ([`socket_in_slot`](Self::socket_in_slot)).
    ///
    /// # Errors
    /// As [`serve`](Self::serve).
    pub async fn serve_slot(
        &self,
        socket: &AsyncFdSocket,
        slot: Option<u32>,
        mut on_bound: impl FnMut(&ListenAddress, &Arc<OwnedFd>),
    ) -> Result<(), ChannelError> {
        while let Some(message) = socket.recv().await? {
            if !message.fds.is_empty() {
                return Err(ChannelError::UnexpectedFds {
                    expected: 0,
                    received: message.fds.len(),
                });
            }
            let request: ListenRequest = decode(&message.data)?;
            let granted = match slot {
                Some(slot) => self.socket_in_slot(&request.address, &request.options, slot),
                None => self.socket(&request.address, &request.options),
            };
            match granted {
                Ok(fd) if self.descriptors => {
                    on_bound(&request.address, &fd);
                    socket
                        .send(&encode(&ListenReply::Bound)?, &[fd.as_fd()])
                        .await?;
                }
                Ok(fd) => {
                    on_bound(&request.address, &fd);
                    let local = ListenAddress::of(&fd).unwrap_or_else(|_| request.address.clone());
                    socket
                        .send(&encode(&ListenReply::BoundHere(local))?, &[])
                        .await?;
                }
                Err(error) => {
                    let os_error = match &error {
                        ServerSocketError::Bind { source, .. } => source.raw_os_error(),
                        _ => None,
                    };
                    let message = std::error::Error::source(&error)
                        .map_or_else(|| error.to_string(), ToString::to_string);
                    tracing::warn!(address = %request.address, error = %message, "cannot listen");
                    socket
                        .send(&encode(&ListenReply::Failed { os_error, message })?, &[])
                        .await?;
                }
            }
        }
        Ok(())
    }
}

/// Asks a [`ServerSocketProvider`] in another process for listening sockets (amphp's
/// `ServerSocketPipeFactory`). Requests are answered in order; concurrent calls queue.
#[derive(Debug)]
pub struct ServerSocketPipeFactory {
    socket: tokio::sync::Mutex<AsyncFdSocket>,
    timeout: Duration,
}

impl ServerSocketPipeFactory {
    /// Wraps a message socket connected to a provider's [`serve`](ServerSocketProvider::serve).
    /// Each request waits at most 10 s for its answer.
    pub fn new(socket: AsyncFdSocket) -> Self {
        Self {
            socket: tokio::sync::Mutex::new(socket),
            timeout: Duration::from_secs(10),
        }
    }

    /// The address a listener for `address` is bound to (the real port for port 0), whether
    /// the provider hands out descriptors or accepts itself.
    ///
    /// # Errors
    /// As [`listen`](ServerSocketFactory::listen).
    pub async fn bound_address(
        &self,
        address: &ListenAddress,
        options: &ListenOptions,
    ) -> Result<ListenAddress, ServerSocketError> {
        match tokio::time::timeout(self.timeout, self.request(address, options))
            .await
            .map_err(|_| ServerSocketError::Timeout(self.timeout))??
        {
            Granted::Socket(fd) => Ok(ListenAddress::of(&fd).map_err(ServerSocketError::Register)?),
            Granted::Address(local) => Ok(local),
        }
    }

    async fn request(
        &self,
        address: &ListenAddress,
        options: &ListenOptions,
    ) -> Result<Granted, ServerSocketError> {
        let socket = self.socket.lock().await;
        let request = ListenRequest {
            address: address.clone(),
            options: options.clone(),
        };
        socket
            .send(&encode(&request)?, &[])
            .await
            .map_err(ChannelError::from)?;
        let mut reply = socket
            .recv()
            .await
            .map_err(ChannelError::from)?
            .ok_or(ServerSocketError::ProviderGone)?;
        match decode::<ListenReply>(&reply.data)? {
            ListenReply::Bound if reply.fds.len() == 1 => {
                Ok(Granted::Socket(reply.fds.pop().expect("checked")))
            }
            ListenReply::BoundHere(local) if reply.fds.is_empty() => Ok(Granted::Address(local)),
            ListenReply::BoundHere(_) => Err(ChannelError::UnexpectedFds {
                expected: 0,
                received: reply.fds.len(),
            }
            .into()),
            ListenReply::Bound => Err(ChannelError::UnexpectedFds {
                expected: 1,
                received: reply.fds.len(),
            }
            .into()),
            ListenReply::Failed { os_error, message } => Err(ServerSocketError::Bind {
                address: address.to_string(),
                source: match os_error {
                    Some(code) => io::Error::from_raw_os_error(code),
                    None => io::Error::other(message),
                },
            }),
        }
    }
}

impl ServerSocketFactory for ServerSocketPipeFactory {
    async fn listen(
        &self,
        address: &ListenAddress,
        options: &ListenOptions,
    ) -> Result<Listener, ServerSocketError> {
        match tokio::time::timeout(self.timeout, self.request(address, options))
            .await
            .map_err(|_| ServerSocketError::Timeout(self.timeout))??
        {
            Granted::Socket(fd) => Listener::from_fd(fd),
            Granted::Address(_) => Err(ServerSocketError::Bind {
                address: address.to_string(),
                source: io::Error::new(
                    io::ErrorKind::Unsupported,
                    "the provider accepts on this socket itself and hands out no descriptor",
                ),
            }),
        }
    }
}

/// What a provider granted: the listening socket, or only the address it bound.
enum Granted {
    Socket(OwnedFd),
    Address(ListenAddress),
}
