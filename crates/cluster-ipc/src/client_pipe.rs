//! Handing accepted client connections to another process, with data of any size.

use std::fmt;
use std::marker::PhantomData;
use std::os::fd::AsFd;

use fdpass::{AsyncFdSocket, FromSocketFd};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ChannelError;
use crate::codec::{decode, encode};

/// Sends accepted client sockets, each with a value `T`, to a [`ClientSocketReceivePipe`] in
/// another process (amphp's `ClientSocketSendPipe`).
///
/// The value travels in the same message as the socket, up to the socket's frame limit
/// (16 MiB by default), so data and socket can never be paired wrongly.
///
/// **Nothing is lost:** when the transfer fails (the receiver is gone, the frame is too
/// large...), [`send`](Self::send) gives the socket back inside [`PipeSendError`] so the
/// caller can route it elsewhere.
///
/// **Bytes already read:** a parent that peeked at or read the start of the client's stream
/// (to route on a header, say) passes those bytes to
/// [`send_with_prefix`](Self::send_with_prefix); they arrive as
/// [`TransferredSocket::prefix`] and the receiver must treat them as the first bytes of the
/// stream, before reading from the socket.
pub struct ClientSocketSendPipe<T> {
    socket: AsyncFdSocket,
    _types: PhantomData<fn(T)>,
}

impl<T> fmt::Debug for ClientSocketSendPipe<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSocketSendPipe")
            .field("socket", &self.socket)
            .finish()
    }
}

impl<T> AsFd for ClientSocketSendPipe<T> {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

/// A failed transfer, holding the socket that was not transferred.
#[derive(Debug, thiserror::Error)]
#[error("client socket transfer failed")]
pub struct PipeSendError<S> {
    /// The client socket, still open and unused, to be re-routed or closed.
    pub socket: S,
    /// Why the transfer failed.
    #[source]
    pub error: ChannelError,
}

impl<S> PipeSendError<S> {
    /// Whether the transfer failed only because the receiver's queue was full (from
    /// [`ClientSocketSendPipe::try_send`]); the receiver may still be fine.
    pub fn is_full(&self) -> bool {
        self.error
            .io_error()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

impl<T: Serialize> ClientSocketSendPipe<T> {
    /// Wraps a connected message socket.
    pub fn new(socket: AsyncFdSocket) -> Self {
        Self {
            socket,
            _types: PhantomData,
        }
    }

    /// Transfers `client` with `data`. On success this process's copy of the socket is closed;
    /// the receiver owns the connection.
    ///
    /// # Errors
    /// [`PipeSendError`], which returns `client`.
    pub async fn send<S: AsFd>(&self, client: S, data: &T) -> Result<(), PipeSendError<S>> {
        self.send_with_prefix(client, data, &[]).await
    }

    /// Transfers `client` with `data` if the receiver's queue has room now, without waiting:
    /// a balancer tries the next receiver instead of queueing behind a busy one.
    ///
    /// # Errors
    /// [`PipeSendError`], which returns `client`; [`PipeSendError::is_full`] tells a full
    /// queue (nothing was sent, try elsewhere or [`send`](Self::send)) from a failure.
    pub fn try_send<S: AsFd>(&self, client: S, data: &T) -> Result<(), PipeSendError<S>> {
        self.try_send_with_prefix(client, data, &[])
    }

    /// [`try_send`](Self::try_send) with bytes already read from `client` (see the type's
    /// docs).
    ///
    /// # Errors
    /// As [`try_send`](Self::try_send).
    pub fn try_send_with_prefix<S: AsFd>(
        &self,
        client: S,
        data: &T,
        prefix: &[u8],
    ) -> Result<(), PipeSendError<S>> {
        let result = encode(&(data, prefix))
            .and_then(|frame| Ok(self.socket.try_send(&frame, &[client.as_fd()])?));
        match result {
            Ok(()) => Ok(()),
            Err(error) => Err(PipeSendError {
                socket: client,
                error,
            }),
        }
    }

    /// Transfers `client` with `data` and bytes already read from it (see the type's docs).
    ///
    /// # Errors
    /// [`PipeSendError`], which returns `client`.
    pub async fn send_with_prefix<S: AsFd>(
        &self,
        client: S,
        data: &T,
        prefix: &[u8],
    ) -> Result<(), PipeSendError<S>> {
        let frame = match encode(&(data, prefix)) {
            Ok(frame) => frame,
            Err(error) => {
                return Err(PipeSendError {
                    socket: client,
                    error,
                });
            }
        };
        match self.socket.send(&frame, &[client.as_fd()]).await {
            Ok(()) => Ok(()),
            Err(error) => Err(PipeSendError {
                socket: client,
                error: error.into(),
            }),
        }
    }
}

/// A client socket received from another process, with the value sent along.
#[derive(Debug)]
pub struct TransferredSocket<T, S> {
    /// The client connection, ready to use.
    pub socket: S,
    /// The value the sender attached.
    pub data: T,
    /// Bytes the sender had already read from the client; they come before anything read
    /// from `socket`. Empty unless the sender used `send_with_prefix`.
    pub prefix: Vec<u8>,
}

/// Receives client sockets sent by a [`ClientSocketSendPipe`] (amphp's
/// `ClientSocketReceivePipe`), as `S`: a `tokio::net::TcpStream` by default, or
/// `tokio::net::UnixStream` (or the `std` types).
pub struct ClientSocketReceivePipe<T, S = tokio::net::TcpStream> {
    socket: AsyncFdSocket,
    /// The sender vouches for every socket's kind and `O_NONBLOCK` ([`Self::vouched`]).
    vouched: bool,
    _types: PhantomData<fn() -> (T, S)>,
}

impl<T, S> fmt::Debug for ClientSocketReceivePipe<T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSocketReceivePipe")
            .field("socket", &self.socket)
            .finish()
    }
}

impl<T: DeserializeOwned, S: FromSocketFd> ClientSocketReceivePipe<T, S> {
    /// Wraps a connected message socket.
    pub fn new(socket: AsyncFdSocket) -> Self {
        Self {
            socket,
            vouched: false,
            _types: PhantomData,
        }
    }

    /// Takes every socket as the sender vouches it is: the right kind and non-blocking,
    /// unchecked ([`fdpass::into_socket_vouched`]). For a sender that checked whatever it
    /// did not accept itself, such as the watcher for its workers.
    #[must_use]
    pub fn vouched(mut self) -> Self {
        self.vouched = true;
        self
    }

    /// The next transferred socket, or `None` when the sender closed the pipe. Cancel-safe.
    ///
    /// # Errors
    /// [`ChannelError`]: a message without exactly one descriptor, a descriptor of the wrong
    /// kind, or undecodable data; every descriptor involved is closed.
    pub async fn receive(&self) -> Result<Option<TransferredSocket<T, S>>, ChannelError> {
        let Some(mut message) = self.socket.recv().await? else {
            return Ok(None);
        };
        if message.fds.len() != 1 {
            return Err(ChannelError::UnexpectedFds {
                expected: 1,
                received: message.fds.len(),
            });
        }
        let (data, prefix): (T, Vec<u8>) = decode(&message.data)?;
        let fd = message.fds.pop().expect("checked above");
        let socket = if self.vouched {
            fdpass::into_socket_vouched(fd).map_err(fdpass::SocketKindError::Io)?
        } else {
            fdpass::into_socket(fd)?
        };
        Ok(Some(TransferredSocket {
            socket,
            data,
            prefix,
        }))
    }
}
