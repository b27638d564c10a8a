//! Upgrading the watcher itself: an old watcher hands its listening sockets to a new one
//! (a new binary, say), which starts its own workers on them; only once all of them are
//! ready does the old watcher stop its workers and go, passing on every connection it would
//! have handed to a worker meanwhile. No listening socket ever closes, so no connection is
//! refused, and nothing accepted is dropped.
//!
//! The two watchers talk over two `SOCK_SEQPACKET` pairs the old one makes and the new one
//! inherits (their descriptor numbers in [`ENV_UPGRADE`]): one for this protocol, one that
//! carries connections as the hand-off pipe to a worker does.
//!
//! 1. Old → new: each listening socket with what it was bound for ([`SocketSpec`]; per-slot
//!    sockets in their group's kernel order), then how many workers to run.
//! 2. The new watcher imports them ([`ServerSocketProvider::import`]), starts its workers,
//!    and says `Ready` with its pid, or `Failed` with the reason (then it exits, and the old
//!    one goes on as if nothing happened).
//! 3. Old → new: `Yours` once the old watcher let go of what only one process can hold (its
//!    pid file, control socket, metrics port, the service manager's `MAINPID`). It then
//!    hands every connection to the new one ([`ClusterWatcher::hand_connections_to`]) and
//!    stops its workers gracefully; the new watcher passes what arrives to its own workers
//!    ([`PredecessorLink::serve_connections`]) until the old one is gone.
//! 4. New → old: `Serving` once it took the pid file and its control socket answers; the
//!    old watcher answers `cluster upgrade` only then ([`HandedOver::wait_serving`]).
//!
//! The `cluster` binary does this on `SIGUSR2` and `cluster upgrade`; an embedding
//! supervisor can do the same with [`SuccessorLink`] and [`PredecessorLink`].

use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::time::Duration;

use cluster_ipc::protocol::ClientMeta;
use cluster_ipc::{
    ClientSocketReceivePipe, ClientSocketSendPipe, ServerSocketProvider, SocketSpec,
};
use fdpass::{AsyncFdSocket, FdSocket};
use serde::{Deserialize, Serialize};

use crate::ClusterWatcher;

/// The environment variable that tells a new watcher it takes over from an old one: the
/// numbers of its two inherited descriptors, `PROTOCOL,CONNECTIONS`.
pub const ENV_UPGRADE: &str = "CLUSTER_UPGRADE_FDS";

/// What the two watchers say to each other.
#[derive(Debug, Serialize, Deserialize)]
enum UpgradeMessage {
    /// A listening socket (the descriptor rides along).
    Socket(SocketSpec),
    /// A member of a UDP or QUIC group, in the group's order (the descriptor rides along).
    Datagram(crate::driver::datagrams::DatagramMember),
    /// Every socket was sent; run this many workers.
    SocketsSent { workers: u32 },
    /// The new watcher's workers are all ready.
    Ready { pid: u32 },
    /// The new watcher gives up, and why.
    Failed(String),
    /// The old watcher let go of its pid file, control socket and the like.
    Yours,
    /// The new watcher took them: its control socket answers.
    Serving,
}

/// What can go wrong in an upgrade.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// The other watcher's socket failed.
    #[error("upgrade channel: {0}")]
    Channel(#[from] fdpass::Error),
    /// A message that is not part of the protocol.
    #[error("upgrade channel: unexpected message: {0}")]
    Protocol(String),
    /// A descriptor could not be set up.
    #[error("upgrade: {0}")]
    Io(#[from] std::io::Error),
    /// The new watcher could not start, and said why.
    #[error("the new watcher failed: {0}")]
    Failed(String),
    /// The other watcher went away (the new one exited before it was ready, say).
    #[error("the other watcher went away")]
    Gone,
    /// No answer in time.
    #[error("no answer from the other watcher within {0:?}")]
    Timeout(Duration),
    /// [`ENV_UPGRADE`] is not two descriptor numbers.
    #[error("{ENV_UPGRADE}={0:?} is not two descriptor numbers")]
    Env(String),
}

async fn send(
    socket: &AsyncFdSocket,
    message: &UpgradeMessage,
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> Result<(), UpgradeError> {
    let bytes =
        postcard::to_allocvec(message).map_err(|e| UpgradeError::Protocol(e.to_string()))?;
    Ok(socket.send(&bytes, fds).await?)
}

async fn receive(socket: &AsyncFdSocket) -> Result<(UpgradeMessage, Vec<OwnedFd>), UpgradeError> {
    let message = socket.recv().await?.ok_or(UpgradeError::Gone)?;
    let decoded =
        postcard::from_bytes(&message.data).map_err(|e| UpgradeError::Protocol(e.to_string()))?;
    Ok((decoded, message.fds))
}

/// The old watcher's side: its link to the watcher taking over.
#[derive(Debug)]
pub struct SuccessorLink {
    protocol: AsyncFdSocket,
    connections: AsyncFdSocket,
}

/// The new watcher's ends of a [`SuccessorLink`], to be inherited by it (and, in the new
/// watcher, what [`PredecessorLink::inherited`] claims).
#[derive(Debug)]
pub struct SuccessorEnds {
    /// The protocol socket's end.
    pub protocol: OwnedFd,
    /// The connection pipe's end.
    pub connections: OwnedFd,
}

impl SuccessorEnds {
    /// Lets `command` (the new watcher) inherit both ends and tells it where they are
    /// ([`ENV_UPGRADE`]).
    pub fn pass_to(self, command: &mut std::process::Command) {
        let protocol = fdpass::inherit_fd(command, self.protocol);
        let connections = fdpass::inherit_fd(command, self.connections);
        command.env(ENV_UPGRADE, format!("{protocol},{connections}"));
    }
}

impl SuccessorLink {
    /// A link and the ends the new watcher inherits.
    ///
    /// # Errors
    /// Out of descriptors.
    pub fn new() -> Result<(Self, SuccessorEnds), UpgradeError> {
        let (protocol, protocol_end) = FdSocket::pair()?;
        let (connections, connections_end) = FdSocket::pair()?;
        Ok((
            Self {
                protocol: protocol.into_async()?,
                connections: connections.into_async()?,
            },
            SuccessorEnds {
                protocol: protocol_end.into(),
                connections: connections_end.into(),
            },
        ))
    }

    /// Sends every listening socket of `watcher`, and the number of workers to run.
    ///
    /// # Errors
    /// The new watcher went away.
    pub async fn send_sockets(
        &self,
        watcher: &ClusterWatcher,
        workers: usize,
    ) -> Result<usize, UpgradeError> {
        let sockets = watcher.server_sockets().export();
        for (spec, fd) in &sockets {
            send(
                &self.protocol,
                &UpgradeMessage::Socket(spec.clone()),
                &[fd.as_fd()],
            )
            .await?;
        }
        // The successor steers the datagram groups from its first worker on (until
        // `upgrade_abandoned`).
        for (member, fd) in watcher.datagrams().export() {
            send(
                &self.protocol,
                &UpgradeMessage::Datagram(member),
                &[fd.as_fd()],
            )
            .await?;
        }
        let workers = u32::try_from(workers).unwrap_or(u32::MAX);
        send(
            &self.protocol,
            &UpgradeMessage::SocketsSent { workers },
            &[],
        )
        .await?;
        Ok(sockets.len())
    }

    /// Waits until the new watcher's workers are all ready; its pid. If it does not come to
    /// that, call [`ClusterWatcher::upgrade_abandoned`].
    ///
    /// # Errors
    /// [`UpgradeError::Failed`] with its reason, [`UpgradeError::Gone`] if it exited,
    /// [`UpgradeError::Timeout`].
    pub async fn wait_ready(&self, timeout: Duration) -> Result<u32, UpgradeError> {
        match tokio::time::timeout(timeout, receive(&self.protocol)).await {
            Err(_) => Err(UpgradeError::Timeout(timeout)),
            Ok(Err(e)) => Err(e),
            Ok(Ok((UpgradeMessage::Ready { pid }, _))) => Ok(pid),
            Ok(Ok((UpgradeMessage::Failed(why), _))) => Err(UpgradeError::Failed(why)),
            Ok(Ok((other, _))) => Err(UpgradeError::Protocol(format!("{other:?}"))),
        }
    }

    /// Tells the new watcher it is on its own (the old one let go of its pid file and
    /// the like), and passes it every connection `watcher` would hand to a worker from now
    /// on. Stop `watcher` next; [`HandedOver::wait_serving`] says when the new watcher
    /// answers on its control socket.
    ///
    /// # Errors
    /// The new watcher went away.
    pub async fn hand_over(self, watcher: &ClusterWatcher) -> Result<HandedOver, UpgradeError> {
        send(&self.protocol, &UpgradeMessage::Yours, &[]).await?;
        watcher.hand_connections_to(ClientSocketSendPipe::new(self.connections));
        Ok(HandedOver {
            protocol: self.protocol,
        })
    }
}

/// The old watcher's side once it handed over: what is left to hear from the new one.
#[derive(Debug)]
pub struct HandedOver {
    protocol: AsyncFdSocket,
}

impl HandedOver {
    /// Waits until the new watcher took the pid file and its control socket answers (so a
    /// `cluster upgrade` that returns is followed by a `cluster status` that works).
    ///
    /// # Errors
    /// It went away, or did not say so in time.
    pub async fn wait_serving(self, timeout: Duration) -> Result<(), UpgradeError> {
        match tokio::time::timeout(timeout, receive(&self.protocol)).await {
            Err(_) => Err(UpgradeError::Timeout(timeout)),
            Ok(Err(e)) => Err(e),
            Ok(Ok((UpgradeMessage::Serving, _))) => Ok(()),
            Ok(Ok((other, _))) => Err(UpgradeError::Protocol(format!("{other:?}"))),
        }
    }
}

/// The new watcher's side: its link to the watcher it takes over from.
#[derive(Debug)]
pub struct PredecessorLink {
    protocol: AsyncFdSocket,
    connections: AsyncFdSocket,
}

impl PredecessorLink {
    /// The link, when this process was started to take over ([`ENV_UPGRADE`] is set);
    /// inside a tokio runtime. [`inherited`](Self::inherited) and [`new`](Self::new) in two
    /// steps, for a program that must claim its inherited descriptors before its runtime
    /// exists.
    ///
    /// # Errors
    /// As [`inherited`](Self::inherited) and [`new`](Self::new).
    pub fn from_env() -> Result<Option<Self>, UpgradeError> {
        Self::inherited()?.map(Self::new).transpose()
    }

    /// Claims the two descriptors named by [`ENV_UPGRADE`], if it is set (they become
    /// close-on-exec: no worker inherits them).
    ///
    /// # Errors
    /// [`UpgradeError::Env`]; numbers that are not inherited descriptors.
    pub fn inherited() -> Result<Option<SuccessorEnds>, UpgradeError> {
        let Some(value) = std::env::var_os(ENV_UPGRADE) else {
            return Ok(None);
        };
        let text = value.to_string_lossy().into_owned();
        let parse = |part: Option<&str>| -> Result<RawFd, UpgradeError> {
            part.and_then(|p| p.parse().ok())
                .filter(|&fd: &RawFd| fd > 2)
                .ok_or_else(|| UpgradeError::Env(text.clone()))
        };
        let mut parts = text.split(',');
        let (protocol, connections) = (parse(parts.next())?, parse(parts.next())?);
        Ok(Some(SuccessorEnds {
            protocol: fdpass::adopt_inherited_fd(protocol)?,
            connections: fdpass::adopt_inherited_fd(connections)?,
        }))
    }

    /// The link over inherited ends; inside a tokio runtime.
    ///
    /// # Errors
    /// Descriptors that are not message sockets.
    pub fn new(ends: SuccessorEnds) -> Result<Self, UpgradeError> {
        let socket =
            |fd| AsyncFdSocket::from_fd(fd).map_err(|e| UpgradeError::Io(std::io::Error::other(e)));
        Ok(Self {
            protocol: socket(ends.protocol)?,
            connections: socket(ends.connections)?,
        })
    }

    /// Takes every listening socket the old watcher sends into `watcher` (its
    /// [`server_sockets`](ClusterWatcher::server_sockets), and its UDP and QUIC groups); the
    /// number of workers to run.
    ///
    /// # Errors
    /// The old watcher went away, or sent what is not a listening socket.
    pub async fn receive_sockets(&self, watcher: &ClusterWatcher) -> Result<usize, UpgradeError> {
        let provider: &ServerSocketProvider = watcher.server_sockets();
        loop {
            match receive(&self.protocol).await? {
                (UpgradeMessage::Socket(spec), mut fds) if fds.len() == 1 => {
                    let fd = fds.pop().expect("checked");
                    provider.import(spec, fd)?;
                }
                (UpgradeMessage::Datagram(member), mut fds) if fds.len() == 1 => {
                    let fd = fds.pop().expect("checked");
                    watcher.datagrams().import(member, fd)?;
                }
                (UpgradeMessage::SocketsSent { workers }, _) => return Ok(workers as usize),
                (other, _) => return Err(UpgradeError::Protocol(format!("{other:?}"))),
            }
        }
    }

    /// Tells the old watcher every worker is ready.
    ///
    /// # Errors
    /// The old watcher went away.
    pub async fn ready(&self) -> Result<(), UpgradeError> {
        let pid = std::process::id();
        send(&self.protocol, &UpgradeMessage::Ready { pid }, &[]).await
    }

    /// Tells the old watcher this one gives up, and why (best effort: it may be gone).
    pub async fn failed(&self, why: &str) {
        let _ = send(&self.protocol, &UpgradeMessage::Failed(why.to_owned()), &[]).await;
    }

    /// Waits until the old watcher let go of its pid file and the like.
    ///
    /// # Errors
    /// It went away, or did not answer in time.
    pub async fn wait_handed_over(&self, timeout: Duration) -> Result<(), UpgradeError> {
        match tokio::time::timeout(timeout, receive(&self.protocol)).await {
            Err(_) => Err(UpgradeError::Timeout(timeout)),
            Ok(Err(e)) => Err(e),
            Ok(Ok((UpgradeMessage::Yours, _))) => Ok(()),
            Ok(Ok((other, _))) => Err(UpgradeError::Protocol(format!("{other:?}"))),
        }
    }

    /// Tells the old watcher this one took its pid file and control socket and answers.
    ///
    /// # Errors
    /// The old watcher went away.
    pub async fn serving(&self) -> Result<(), UpgradeError> {
        send(&self.protocol, &UpgradeMessage::Serving, &[]).await
    }

    /// Passes every connection the old watcher sends to `watcher`'s workers, until the old
    /// watcher is gone; how many.
    pub async fn serve_connections(self, watcher: &ClusterWatcher) -> u64 {
        let pipe = ClientSocketReceivePipe::<ClientMeta, OwnedFd>::new(self.connections);
        let mut passed = 0;
        loop {
            match pipe.receive().await {
                Ok(Some(client)) => {
                    watcher
                        .hand_over(client.socket, &client.data, &client.prefix)
                        .await;
                    passed += 1;
                }
                Ok(None) => break,
                Err(e) if e.io_error().is_some() => break,
                Err(e) => {
                    tracing::warn!(error = %e, "a bad connection from the old watcher; skipped")
                }
            }
        }
        // The old watcher closed its end: it is gone, and its workers with it.
        watcher.datagrams().predecessor_gone();
        passed
    }
}
