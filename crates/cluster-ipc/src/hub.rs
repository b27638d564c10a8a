//! The key-authenticated connection hub: a Unix socket in a private directory where child
//! processes connect and claim their connection with a single-use key.

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use fdpass::{AsyncFdSocket, Limits, SeqpacketListener};
use rustix::fs::Mode;
use rustix::io::Errno;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;

use crate::key::KEY_LEN;
use crate::{HubError, Key};

/// What a client sends first: this tag, then the key.
const HELLO_TAG: &[u8; 8] = b"CLHUB/1\0";
const HELLO_LEN: usize = HELLO_TAG.len() + KEY_LEN;
/// What the hub answers when the key matched.
const WELCOME: &[u8] = b"WELCOME";

/// Timeouts and admission rules of an [`IpcHub`].
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// How long a connecting peer has to send its key (default 5 s); a peer that stalls longer
    /// is disconnected.
    pub handshake_timeout: Duration,
    /// How long [`IpcHub::accept`] waits for the key's connection (default 10 s), and how long
    /// a generated key stays valid if nobody accepts it.
    pub accept_timeout: Duration,
    /// User ids allowed to connect besides the hub's own effective uid (checked with
    /// `SO_PEERCRED`; default: none).
    pub extra_uids: Vec<u32>,
    /// Handshakes in progress at once (default 64); connections beyond are closed at once, so
    /// a flood cannot exhaust the hub.
    pub max_handshakes: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(5),
            accept_timeout: Duration::from_secs(10),
            extra_uids: Vec::new(),
            max_handshakes: 64,
        }
    }
}

/// A generated key and where its connection goes once it arrives.
#[derive(Debug)]
struct PendingKey {
    key: Key,
    created: Instant,
    deliver: Option<oneshot::Sender<AsyncFdSocket>>,
    arrival: Option<oneshot::Receiver<AsyncFdSocket>>,
}

#[derive(Debug)]
struct Shared {
    config: HubConfig,
    pending: Mutex<Vec<PendingKey>>,
}

impl Shared {
    fn pending(&self) -> parking_lot::MutexGuard<'_, Vec<PendingKey>> {
        self.pending.lock()
    }
}

/// Why a connection was turned away during the handshake (logged, never sent to the peer).
#[derive(Debug, thiserror::Error)]
enum Rejection {
    #[error("peer uid {0} is not allowed")]
    Uid(u32),
    #[error("no key within {0:?}")]
    Stalled(Duration),
    #[error("closed before sending a key")]
    Closed,
    #[error("malformed hello of {0} bytes")]
    Malformed(usize),
    #[error("unknown, used or expired key")]
    WrongKey,
    #[error("bad handshake traffic: {0}")]
    Transport(#[from] fdpass::Error),
    #[error("cannot inspect peer: {0}")]
    Io(#[from] io::Error),
}

/// Listens on a Unix socket inside a fresh private directory and hands each connection to the
/// [`accept`](Self::accept) call that waits for its key.
///
/// The directory is mode 0700 and the socket 0600, both removed when the hub is dropped. A
/// connecting peer must be the same user (`SO_PEERCRED`, see [`HubConfig::extra_uids`]) and
/// present, within [`HubConfig::handshake_timeout`], a key from
/// [`generate_key`](Self::generate_key); keys are compared in constant time and work once. A peer that sends a
/// wrong, expired or malformed key, garbage, descriptors, or nothing, is disconnected and the
/// reason logged; everyone else is unaffected.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use cluster_ipc::{Channel, IpcHub, connect};
/// let hub = IpcHub::new()?;
/// let key = hub.generate_key();
/// // Normally in the child process, which got the path and key from its parent:
/// let (path, child_key) = (hub.path().to_owned(), key.clone());
/// let child = tokio::spawn(async move { connect(&path, &child_key).await });
/// let parent_end = Channel::<String, String>::new(hub.accept(&key).await?);
/// let child_end = Channel::<String, String>::new(child.await??);
/// child_end.send(&"hello".to_owned()).await?;
/// assert_eq!(parent_end.recv().await?.as_deref(), Some("hello"));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct IpcHub {
    shared: Arc<Shared>,
    dir: PathBuf,
    path: PathBuf,
    accept_loop: JoinHandle<()>,
}

impl IpcHub {
    /// Creates a hub with the default [`HubConfig`]. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// When the directory or socket cannot be created.
    pub fn new() -> Result<Self, HubError> {
        Self::with_config(HubConfig::default())
    }

    /// Creates a hub with the given configuration.
    ///
    /// # Errors
    /// When the directory or socket cannot be created.
    pub fn with_config(config: HubConfig) -> Result<Self, HubError> {
        let dir = private_dir()?;
        let path = dir.join("hub.sock");
        let listener = match listen_at(&path) {
            Ok(listener) => listener,
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                return Err(e.into());
            }
        };
        let shared = Arc::new(Shared {
            config,
            pending: Mutex::new(Vec::new()),
        });
        let accept_loop = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Self {
            shared,
            dir,
            path,
            accept_loop,
        })
    }

    /// The socket's path, to hand to children.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A fresh single-use key (256 bits from the OS random source) registered with this hub.
    /// It expires after [`HubConfig::accept_timeout`] if nobody accepts it.
    pub fn generate_key(&self) -> Key {
        let key = Key::generate();
        let (deliver, arrival) = oneshot::channel();
        let mut pending = self.shared.pending();
        let ttl = self.shared.config.accept_timeout;
        pending.retain(|p| p.created.elapsed() < ttl || p.arrival.is_none());
        pending.push(PendingKey {
            key: key.clone(),
            created: Instant::now(),
            deliver: Some(deliver),
            arrival: Some(arrival),
        });
        key
    }

    /// Waits up to [`HubConfig::accept_timeout`] for the connection that presents `key`, which
    /// may also have arrived before this call. The key is spent either way.
    ///
    /// # Errors
    /// [`HubError::UnknownKey`], [`HubError::AlreadyAccepting`], [`HubError::AcceptTimeout`].
    pub async fn accept(&self, key: &Key) -> Result<AsyncFdSocket, HubError> {
        let arrival = {
            let mut pending = self.shared.pending();
            let entry = pending
                .iter_mut()
                .find(|p| p.key.ct_eq(key))
                .ok_or(HubError::UnknownKey)?;
            entry.arrival.take().ok_or(HubError::AlreadyAccepting)?
        };
        let timeout = self.shared.config.accept_timeout;
        let result = tokio::time::timeout(timeout, arrival).await;
        self.shared.pending().retain(|p| !p.key.ct_eq(key));
        match result {
            Ok(Ok(socket)) => Ok(socket),
            Ok(Err(_)) => Err(HubError::Closed),
            Err(_) => Err(HubError::AcceptTimeout(timeout)),
        }
    }
}

impl Drop for IpcHub {
    fn drop(&mut self) {
        self.accept_loop.abort();
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn private_dir() -> io::Result<PathBuf> {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    for _ in 0..16 {
        let name = format!(
            "cluster-{}-{}",
            std::process::id(),
            &Key::generate().to_hex()[..12]
        );
        let dir = base.join(name);
        match rustix::fs::mkdir(&dir, Mode::RWXU) {
            Ok(()) => {
                // mkdir's mode is filtered by the umask; set it exactly.
                rustix::fs::chmod(&dir, Mode::RWXU)?;
                return Ok(dir);
            }
            Err(Errno::EXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no fresh directory name",
    ))
}

fn listen_at(path: &Path) -> io::Result<SeqpacketListener> {
    let listener = SeqpacketListener::bind(path, 128)?;
    // The directory is already 0700; the socket gets 0600 as a second fence.
    rustix::fs::chmod(path, Mode::RUSR | Mode::WUSR)?;
    Ok(listener)
}

async fn accept_loop(listener: SeqpacketListener, shared: Arc<Shared>) {
    let handshakes = Arc::new(Semaphore::new(shared.config.max_handshakes));
    loop {
        match listener.accept().await {
            Ok(socket) => {
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    tracing::warn!("ipc hub: too many handshakes in progress, connection closed");
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let peer = peer_pid(&socket);
                    if let Err(reason) = handshake(socket, &shared).await {
                        tracing::warn!(peer_pid = peer, %reason, "ipc hub: connection rejected");
                    }
                    drop(permit);
                });
            }
            Err(e) if is_transient_accept_error(&e) => {}
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning.
                tracing::warn!(error = %e, "ipc hub: accept failed, retrying in 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        Errno::from_io_error(e),
        Some(Errno::CONNABORTED | Errno::INTR | Errno::PROTO | Errno::PERM)
    )
}

fn peer_pid(fd: &impl AsFd) -> i32 {
    rustix::net::sockopt::socket_peercred(fd)
        .map(|cred| cred.pid.as_raw_nonzero().get())
        .unwrap_or(0)
}

async fn handshake(socket: AsyncFdSocket, shared: &Shared) -> Result<(), Rejection> {
    let uid = rustix::net::sockopt::socket_peercred(&socket)
        .map_err(io::Error::from)?
        .uid
        .as_raw();
    let own = rustix::process::geteuid().as_raw();
    if uid != own && !shared.config.extra_uids.contains(&uid) {
        return Err(Rejection::Uid(uid));
    }
    // During the handshake a peer may send exactly one short message and no descriptor.
    let limits = Limits::default().max_message_len(HELLO_LEN).max_fds(0);
    let socket = socket.with_limits(limits);
    let timeout = shared.config.handshake_timeout;
    let hello = tokio::time::timeout(timeout, socket.recv())
        .await
        .map_err(|_| Rejection::Stalled(timeout))??
        .ok_or(Rejection::Closed)?;
    let key = match hello.data.split_at_checked(HELLO_TAG.len()) {
        Some((tag, key)) if tag == HELLO_TAG => Key::from_bytes(key),
        _ => None,
    }
    .ok_or(Rejection::Malformed(hello.data.len()))?;
    let deliver = {
        let mut pending = shared.pending();
        let ttl = shared.config.accept_timeout;
        // Visit every entry so the time taken does not depend on which one matched.
        let mut found = None;
        for entry in pending.iter_mut() {
            let fresh = entry.arrival.is_none() || entry.created.elapsed() < ttl;
            if entry.key.ct_eq(&key) && fresh {
                found = entry.deliver.take();
            }
        }
        found.ok_or(Rejection::WrongKey)?
    };
    socket.send(WELCOME, &[]).await?;
    // If the accepting side gave up meanwhile, the socket is dropped and the peer sees EOF.
    let _ = deliver.send(socket.with_limits(Limits::default()));
    Ok(())
}

/// Connects to the hub at `path` and presents `key`: the child's side of
/// [`IpcHub::accept`]. Waits at most 5 s for the hub's answer.
///
/// # Errors
/// [`HubError::Rejected`] when the hub refuses the key; [`HubError::Io`] when the socket
/// cannot be reached; [`HubError::HandshakeTimeout`].
pub async fn connect(path: &Path, key: &Key) -> Result<AsyncFdSocket, HubError> {
    const TIMEOUT: Duration = Duration::from_secs(5);
    tokio::time::timeout(TIMEOUT, connect_inner(path, key))
        .await
        .map_err(|_| HubError::HandshakeTimeout(TIMEOUT))?
}

async fn connect_inner(path: &Path, key: &Key) -> Result<AsyncFdSocket, HubError> {
    let socket = AsyncFdSocket::connect(path).await?;
    let mut hello = HELLO_TAG.to_vec();
    hello.extend_from_slice(key.as_bytes());
    // A hub that turns us away just closes the connection: end of file, or a reset or broken
    // pipe when it did so before reading what we sent.
    let turned_away = |e: fdpass::Error| match e {
        fdpass::Error::Io(io)
            if matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ) =>
        {
            HubError::Rejected
        }
        other => crate::ChannelError::from(other).into(),
    };
    socket.send(&hello, &[]).await.map_err(turned_away)?;
    match socket.recv().await.map_err(turned_away)? {
        Some(reply) if reply.data == WELCOME && reply.fds.is_empty() => Ok(socket),
        _ => Err(HubError::Rejected),
    }
}
