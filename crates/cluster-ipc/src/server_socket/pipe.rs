//! Sockets across a process boundary: the provider answering listen requests
//! ([`ServerSocketProvider::serve`]) and the [`ServerSocketPipeFactory`] that asks it.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use fdpass::AsyncFdSocket;
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::{
    ChannelError, ListenAddress, ListenOptions, Listener, ServerSocketError, ServerSocketFactory,
    ServerSocketProvider,
};

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

impl ServerSocketProvider {
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
