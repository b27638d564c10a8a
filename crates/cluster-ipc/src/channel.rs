//! Typed, framed, cancel-safe channels over a message socket.

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::sync::Arc;

use fdpass::{AsyncFdSocket, Limits};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ChannelError;
use crate::codec::{decode, encode};

/// A bidirectional channel sending `S` and receiving `R`, each value one postcard frame.
///
/// Frames are bounded by the socket's [`Limits`] (default 16 MiB, see
/// [`fdpass::DEFAULT_MAX_MESSAGE_LEN`]); an oversize, truncated or undecodable frame is a
/// [`ChannelError`], never a panic, and nothing is allocated before the bytes actually arrive.
/// `recv` returns `Ok(None)` at a clean end of file. Both `send` and `recv` are cancel-safe
/// (see [`AsyncFdSocket`]); [`split`](Self::split) gives halves for separate tasks.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use cluster_ipc::Channel;
/// let (parent, child) = Channel::<String, u32>::pair()?;
/// parent.send(&"how long?".to_owned()).await?;
/// let question = child.recv().await?.expect("open");
/// child.send(&(question.len() as u32)).await?;
/// assert_eq!(parent.recv().await?, Some(9));
/// # Ok(()) }
/// ```
pub struct Channel<S, R> {
    socket: Arc<AsyncFdSocket>,
    _types: PhantomData<fn(S) -> R>,
}

impl<S, R> fmt::Debug for Channel<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("socket", &self.socket)
            .finish()
    }
}

impl<S: Serialize, R: DeserializeOwned> Channel<S, R> {
    /// A connected pair of channels in this process.
    ///
    /// # Errors
    /// Outside a tokio runtime, or when out of descriptors.
    pub fn pair() -> io::Result<(Self, Channel<R, S>)> {
        let (a, b) = AsyncFdSocket::pair()?;
        Ok((Self::new(a), Channel::new(b)))
    }

    /// Sends one value.
    ///
    /// # Errors
    /// [`ChannelError::Encode`], or [`ChannelError::Transport`] when the frame is too large or
    /// the peer is gone.
    pub async fn send(&self, value: &S) -> Result<(), ChannelError> {
        send(&self.socket, value).await
    }

    /// Receives the next value, or `None` at a clean end of file.
    ///
    /// # Errors
    /// Any [`ChannelError`]; a frame carrying descriptors is rejected and they are closed.
    pub async fn recv(&self) -> Result<Option<R>, ChannelError> {
        recv(&self.socket).await
    }

    /// Splits into a sending half (cloneable) and a receiving half.
    pub fn split(self) -> (ChannelSender<S>, ChannelReceiver<R>) {
        (
            ChannelSender {
                socket: self.socket.clone(),
                _types: PhantomData,
            },
            ChannelReceiver {
                socket: self.socket,
                _types: PhantomData,
            },
        )
    }
}

impl<S, R> Channel<S, R> {
    /// Wraps a connected message socket: from [`IpcHub`](crate::IpcHub) or
    /// [`connect`](crate::connect), or an inherited socket pair.
    pub fn new(socket: AsyncFdSocket) -> Self {
        Self {
            socket: Arc::new(socket),
            _types: PhantomData,
        }
    }

    /// Replaces the frame limits (both directions). Call before the first message.
    ///
    /// # Panics
    /// If the channel was already split.
    #[must_use]
    pub fn with_limits(self, limits: Limits) -> Self {
        let socket = Arc::try_unwrap(self.socket).expect("with_limits before split");
        Self {
            socket: Arc::new(socket.with_limits(limits)),
            _types: PhantomData,
        }
    }
}

async fn send<S: Serialize>(socket: &AsyncFdSocket, value: &S) -> Result<(), ChannelError> {
    let bytes = encode(value)?;
    Ok(socket.send(&bytes, &[]).await?)
}

async fn recv<R: DeserializeOwned>(socket: &AsyncFdSocket) -> Result<Option<R>, ChannelError> {
    let Some(message) = socket.recv().await? else {
        return Ok(None);
    };
    if !message.fds.is_empty() {
        return Err(ChannelError::UnexpectedFds {
            expected: 0,
            received: message.fds.len(),
        });
    }
    decode(&message.data).map(Some)
}

/// The sending half of a [`Channel`]; clone it to send from several tasks.
pub struct ChannelSender<S> {
    socket: Arc<AsyncFdSocket>,
    _types: PhantomData<fn(S)>,
}

impl<S> Clone for ChannelSender<S> {
    fn clone(&self) -> Self {
        Self {
            socket: self.socket.clone(),
            _types: PhantomData,
        }
    }
}

impl<S> fmt::Debug for ChannelSender<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelSender")
            .field("socket", &self.socket)
            .finish()
    }
}

impl<S: Serialize> ChannelSender<S> {
    /// Sends one value; see [`Channel::send`].
    ///
    /// # Errors
    /// As [`Channel::send`].
    pub async fn send(&self, value: &S) -> Result<(), ChannelError> {
        send(&self.socket, value).await
    }
}

/// The receiving half of a [`Channel`].
pub struct ChannelReceiver<R> {
    socket: Arc<AsyncFdSocket>,
    _types: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for ChannelReceiver<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelReceiver")
            .field("socket", &self.socket)
            .finish()
    }
}

impl<R: DeserializeOwned> ChannelReceiver<R> {
    /// Receives the next value; see [`Channel::recv`].
    ///
    /// # Errors
    /// As [`Channel::recv`].
    pub async fn recv(&self) -> Result<Option<R>, ChannelError> {
        recv(&self.socket).await
    }
}
