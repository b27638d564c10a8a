//! [`Accept`]: what runs between accepting a connection and speaking HTTP on it, for the
//! `serve_*_with` loops: a TLS handshake (tokio-rustls with feature `tls`, or any TLS stack
//! through this trait), which also says, by ALPN, which HTTP to speak.
//!
//! A TLS connection's state lives in the process that made the handshake, so it cannot be
//! handed to the next generation as a plain one can: at a stop, an idle HTTP/1.1 TLS
//! connection is closed (its client reconnects, to a worker of the next generation), one
//! with a request in flight is answered first; HTTP/2 drains with GOAWAY as in plain text.

use std::future::Future;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::{BoxError, Traced, h1, h2};
use crate::ClientStream;

/// How long a client may take over its handshake before its connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP version a handshake settled on (by ALPN: `h2` or `http/1.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Negotiated {
    /// HTTP/1.1 (also when the client offered no ALPN).
    Http1,
    /// HTTP/2 (`h2`).
    Http2,
}

/// Turns an accepted connection into the stream HTTP runs on (a TLS handshake).
pub trait Accept: Send + Sync + 'static {
    /// The stream after the handshake.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Makes the handshake; says which HTTP to speak.
    fn accept(
        &self,
        stream: ClientStream,
    ) -> impl Future<Output = std::io::Result<(Self::Stream, Negotiated)>> + Send;
}

#[cfg(feature = "tls")]
impl Accept for tokio_rustls::TlsAcceptor {
    type Stream = tokio_rustls::server::TlsStream<ClientStream>;

    async fn accept(&self, stream: ClientStream) -> std::io::Result<(Self::Stream, Negotiated)> {
        // The inherent method (the handshake), not this one.
        let tls = Self::accept(self, stream).await?;
        let negotiated = match tls.get_ref().1.alpn_protocol() {
            Some(b"h2") => Negotiated::Http2,
            _ => Negotiated::Http1,
        };
        Ok((tls, negotiated))
    }
}

/// Serves one connection through `acceptor`'s handshake.
pub(super) async fn serve_connection<A, S, B>(
    acceptor: std::sync::Arc<A>,
    stream: ClientStream,
    service: Traced<S>,
    stopped: watch::Receiver<bool>,
) where
    A: Accept,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!("handshake timed out");
            return;
        }
    };
    match stream {
        (stream, Negotiated::Http2) => h2::serve(stream, service).await,
        (stream, Negotiated::Http1) => {
            h1::serve(stream, service, stopped, false).await;
        }
    }
}
