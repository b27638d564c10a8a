//! Where the watcher's connections come from besides its accept threads
//! (`accept_thread.rs`): the connections still queued for a worker that exited, read back, and
//! the idle ones stopping (or rebalanced) workers hand back; and where they go once a
//! successor watcher took over.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use cluster_ipc::ClientSocketReceivePipe;
use cluster_ipc::protocol::ClientMeta;
use parking_lot::Mutex;

use super::handoff::{Balancer, ClientPipe, Route};
use super::hash::{self, HashKey};
use crate::task::spawn_in;

impl Balancer {
    /// Connections still queued for a worker that has exited go to the other workers, so a
    /// crash or a kill loses only the connections the worker had taken (and, during a
    /// shutdown, those no worker is left to take). `worker_end` is the
    /// watcher's duplicate of the worker's end of its hand-off pipe, kept for this: the
    /// queue lives as long as any descriptor of that end.
    pub(crate) fn reclaim(self: &Arc<Self>, pipe: &ClientPipe, worker_end: OwnedFd) {
        // With our end shut for writing, reading the worker's end stops at end of file.
        Self::close_pipe(pipe);
        let queued = match fdpass::AsyncFdSocket::from_fd(worker_end) {
            Ok(socket) => ClientSocketReceivePipe::<ClientMeta, OwnedFd>::new(socket),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read an exited worker's queued connections");
                return;
            }
        };
        let this = self.clone();
        self.track(spawn_in(self.span.clone(), async move {
            let mut reclaimed = 0usize;
            // The queue holds a few dozen connections at most (HANDOFF_SEND_BUFFER); the cap
            // and the timeout only guard against the unexpected.
            for _ in 0..4096 {
                let client =
                    match tokio::time::timeout(Duration::from_secs(1), queued.receive()).await {
                        Ok(Ok(Some(client))) => client,
                        // End of file: everything queued was read.
                        Ok(Ok(None)) | Err(_) => break,
                        Ok(Err(e)) => match e.io_error() {
                            Some(io) => {
                                tracing::warn!(error = %io, "reading back an exited worker's queue failed");
                                break;
                            }
                            // One bad message costs only itself.
                            None => {
                                tracing::warn!(error = %e, "unreadable hand-off in an exited worker's queue");
                                continue;
                            }
                        },
                    };
                if this
                    .to_successor(&client.socket, &client.data, &client.prefix)
                    .await
                {
                    reclaimed += 1;
                    continue;
                }
                let route = this.routes().get(&client.data.listener).cloned();
                match route {
                    Some(route) => {
                        this.dispatch(&route, client.socket, client.data, client.prefix)
                            .await;
                        reclaimed += 1;
                    }
                    None => tracing::warn!(
                        listener = %client.data.listener,
                        "no worker listens there any more; a connection queued for an exited worker was closed"
                    ),
                }
            }
            if reclaimed > 0 {
                tracing::info!(
                    reclaimed,
                    "connections queued for an exited worker were passed to others"
                );
            }
        }));
    }

    /// Hands a connection on, by its key in the sticky modes. A key in the request is read
    /// from its head in a task of its own (accepting goes on), at most
    /// [`MAX_READING`](super::handoff::MAX_READING) at once; past that, or when the head does not give the key, the
    /// client's address is the key.
    pub(super) async fn dispatch(
        self: &Arc<Self>,
        route: &Arc<Mutex<Route>>,
        socket: OwnedFd,
        meta: ClientMeta,
        mut prefix: Vec<u8>,
    ) {
        let key = match self.key_without_reading(&meta, &prefix) {
            Ok(known) => return self.hand_off(route, socket, &meta, &prefix, known).await,
            Err(key) => key,
        };
        let by_address = hash::of_address(meta.peer);
        let Ok(permit) = self.reading.clone().try_acquire_owned() else {
            self.hash_fallbacks
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return self
                .hand_off(route, socket, &meta, &prefix, Some(by_address))
                .await;
        };
        let (this, route) = (self.clone(), route.clone());
        self.track(spawn_in(self.span.clone(), async move {
            hash::read_head(&socket, &mut prefix).await;
            drop(permit);
            let found = key.of_head(&prefix).unwrap_or_else(|| {
                this.hash_fallbacks
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                by_address
            });
            this.hand_off(&route, socket, &meta, &prefix, Some(found))
                .await;
        }));
    }

    /// The key a connection is handed off by, when it is known without reading the request:
    /// `Ok(None)` unhashed, `Ok(Some(address's key))` for `hash=ip` and for a live session
    /// (its prefix is its record and WebSocket frames, no request head); `Err(key)` when
    /// `key` is in the request head, which must be read first.
    pub(super) fn key_without_reading(
        &self,
        meta: &ClientMeta,
        prefix: &[u8],
    ) -> Result<Option<u32>, HashKey> {
        match &self.hash_key {
            None => Ok(None),
            Some(key)
                if !key.in_request() || prefix.starts_with(cluster_ipc::session::SESSION_MAGIC) =>
            {
                Ok(Some(hash::of_address(meta.peer)))
            }
            Some(key) => Err(key.clone()),
        }
    }

    /// From now on every connection goes to `successor` (a watcher that took over), and
    /// this one stops accepting: the successor accepts on the same sockets.
    pub(crate) fn hand_to_successor(&self, successor: ClientPipe) {
        // A second successor is refused by the upgrade protocol before it gets here.
        let _ = self.successor.set(successor);
        for (_, acceptor) in self.accepting.lock().drain() {
            acceptor.stop();
        }
    }

    /// Sends a connection to the successor; `false` if there is none.
    pub(super) async fn to_successor(
        &self,
        socket: &OwnedFd,
        meta: &ClientMeta,
        prefix: &[u8],
    ) -> bool {
        let Some(successor) = self.successor.get() else {
            return false;
        };
        let send = successor.send_with_prefix(socket, meta, prefix);
        match tokio::time::timeout(Duration::from_secs(5), send).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e.error, "a connection for the successor watcher could not be passed; closed");
            }
            Err(_) => tracing::warn!("the successor watcher takes no connections; one closed"),
        }
        true
    }

    /// A connection a stopping worker handed back (idle between requests, with the bytes it
    /// had read), or a predecessor watcher passed on, goes to another ready worker listening
    /// on the same address; closed only when no worker listens there any more. It must be
    /// what the watcher vouches for to its workers: a hand-back's typed receive checked it,
    /// a predecessor's went through [`vouch_for`].
    pub(crate) async fn hand_over(
        self: &Arc<Self>,
        socket: OwnedFd,
        meta: &ClientMeta,
        prefix: &[u8],
    ) {
        if self.to_successor(&socket, meta, prefix).await {
            return;
        }
        let route = self.routes().get(&meta.listener).cloned();
        match route {
            Some(route) => {
                let Err(socket) = self.to_preferred(&route, socket, meta, prefix) else {
                    return;
                };
                self.dispatch(&route, socket, meta.clone(), prefix.to_vec())
                    .await;
            }
            None => tracing::debug!(
                listener = %meta.listener,
                "a handed-back connection has no worker to go to; closed"
            ),
        }
    }
}

/// Makes `socket` what the watcher vouches for to its workers (`CLUSTER_CLIENTS_VOUCHED`,
/// they take it unchecked): a connected stream socket, non-blocking. Its own accepts are so
/// from the start, and a worker's hand-backs are checked by their typed receive; this is
/// for a predecessor watcher's connections, which may come from an older version that
/// sends them blocking.
pub(crate) fn vouch_for(socket: &OwnedFd) -> std::io::Result<()> {
    let kind = fdpass::SocketKind::of(socket)?;
    if kind.type_ != rustix::net::SocketType::STREAM || kind.listening {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("found {kind}"),
        ));
    }
    Ok(rustix::io::ioctl_fionbio(socket, true)?)
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;

    use rustix::fs::OFlags;

    use super::vouch_for;

    fn nonblocking(fd: &OwnedFd) -> bool {
        rustix::fs::fcntl_getfl(fd)
            .unwrap()
            .contains(OFlags::NONBLOCK)
    }

    #[test]
    fn only_connected_stream_sockets_are_vouched_for_and_they_become_non_blocking() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let accepted = OwnedFd::from(listener.accept().unwrap().0);
        assert!(!nonblocking(&accepted));
        vouch_for(&accepted).unwrap();
        assert!(nonblocking(&accepted));

        let (unix, _other) = std::os::unix::net::UnixStream::pair().unwrap();
        vouch_for(&OwnedFd::from(unix)).unwrap();

        let udp = OwnedFd::from(std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
        assert!(vouch_for(&udp).is_err());
        assert!(vouch_for(&OwnedFd::from(listener)).is_err());
        let (pipe, _) = rustix::pipe::pipe().unwrap();
        assert!(vouch_for(&pipe).is_err());
    }
}
