//! [`SessionIo`]: what an upgraded connection is under its WebSocket: the plain client
//! stream the serve loop had (a session that can move), or hyper's upgraded connection when
//! it is anything else (TLS: a session that cannot).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::inflate::Inflate;
use crate::ClientStream;
use crate::serve::io::HoldIo;

/// The connection under a session.
pub(crate) enum SessionIo {
    /// The client's own socket (and the bytes hyper had read past the handshake).
    Plain(ClientStream),
    /// Another transport, through hyper (TLS).
    Upgraded(TokioIo<hyper::upgrade::Upgraded>),
    /// Either, with what the client sends decompressed (permessage-deflate).
    Inflated(Box<Inflate<Self>>),
}

impl std::fmt::Debug for SessionIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Plain(stream) => f.debug_tuple("Plain").field(stream).finish(),
            Self::Upgraded(_) => f.write_str("Upgraded"),
            Self::Inflated(_) => f.write_str("Inflated"),
        }
    }
}

impl SessionIo {
    /// The connection behind `upgraded`, and the bytes hyper read past the handshake.
    pub(crate) fn from_upgraded(upgraded: hyper::upgrade::Upgraded) -> (Self, Vec<u8>) {
        match upgraded.downcast::<HoldIo<ClientStream>>() {
            Ok(parts) => (Self::Plain(parts.io.into_inner()), parts.read_buf.to_vec()),
            Err(upgraded) => (Self::Upgraded(TokioIo::new(upgraded)), Vec::new()),
        }
    }

    /// Whether it is the client's own socket (a session on it can move).
    pub(crate) fn is_plain(&self) -> bool {
        matches!(self, Self::Plain(_))
    }

    /// The same connection, what the client sends decompressed from now on (`read`: the
    /// bytes already read past the handshake).
    pub(crate) fn inflated(self, read: Vec<u8>, max_message: usize) -> Self {
        Self::Inflated(Box::new(Inflate::new(self, read, max_message)))
    }
}

impl AsyncRead for SessionIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Self::Upgraded(io) => Pin::new(io).poll_read(cx, buf),
            Self::Inflated(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SessionIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Self::Upgraded(io) => Pin::new(io).poll_write(cx, buf),
            Self::Inflated(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Self::Upgraded(io) => Pin::new(io).poll_flush(cx),
            Self::Inflated(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Self::Upgraded(io) => Pin::new(io).poll_shutdown(cx),
            Self::Inflated(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}
