//! WebSocket sessions that survive a restart: [`Upgrade`] accepts the WebSocket handshake
//! (an axum extractor, or [`Upgrade::from_request`] for hyper), and each session runs in the
//! application's handler as a [`Session`] with a state of the application's own. When the
//! worker stops, a session between two messages leaves with its socket, the bytes the client
//! sent that nobody read yet and its state serialized, through the watcher, to a worker of
//! the next generation, whose handler set with [`resume`] picks it up: the client sees no
//! close, no error, no lost or repeated message; at most a pause of a few milliseconds.
//!
//! A session that cannot move (standalone, TLS terminated in the worker, a state that does
//! not serialize, a new generation that resumes nothing) is closed with 1012 instead, the
//! clean goodbye of [`Draining`](super::Draining), and counted (`cluster_sessions_closed`).
//! permessage-deflate is taken only when the application asks ([`Upgrade::deflate`]): the
//! client's compression window cannot move, so those sessions are closed with 1012 at a stop.

use std::future::Future;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use hyper::header::{self, HeaderMap, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::io::SessionIo;
use super::tap::Tap;
use crate::resume::{COUNTS, Origin, Resumed};

/// An accepted WebSocket handshake, to be upgraded into a [`Session`].
#[derive(Debug)]
pub struct Upgrade {
    on_upgrade: hyper::upgrade::OnUpgrade,
    accept: String,
    offered: Vec<String>,
    protocol: Option<String>,
    origin: Option<Origin>,
    config: WebSocketConfig,
    /// The client offered permessage-deflate.
    deflate_offered: bool,
    /// The application takes it (see [`deflate`](Self::deflate)).
    deflate: bool,
}

/// Why a request is not a WebSocket handshake this server takes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// A header the handshake needs is missing or wrong (RFC 6455 §4.2.1).
    #[error("not a WebSocket handshake: {0}")]
    Handshake(&'static str),
    /// The connection cannot be upgraded (served outside the serve loops, or HTTP/2).
    #[error("this connection cannot be upgraded")]
    NotUpgradable,
}

impl axum::response::IntoResponse for UpgradeError {
    fn into_response(self) -> axum::response::Response {
        (hyper::StatusCode::BAD_REQUEST, self.to_string()).into_response()
    }
}

impl<T: Send + Sync> FromRequestParts<T> for Upgrade {
    type Rejection = UpgradeError;

    async fn from_request_parts(
        parts: &mut hyper::http::request::Parts,
        _state: &T,
    ) -> Result<Self, UpgradeError> {
        Self::from_parts(&parts.headers, &mut parts.extensions)
    }
}

impl Upgrade {
    /// The handshake of a hyper request (served by [`serve_http`](crate::serve_http)).
    ///
    /// # Errors
    /// [`UpgradeError`] when it is not one.
    pub fn from_request<B>(request: &mut hyper::Request<B>) -> Result<Self, UpgradeError> {
        let (headers, extensions) = (request.headers().clone(), request.extensions_mut());
        Self::from_parts(&headers, extensions)
    }

    fn from_parts(
        headers: &HeaderMap,
        extensions: &mut hyper::http::Extensions,
    ) -> Result<Self, UpgradeError> {
        let has = |name: header::HeaderName, token: &str| {
            headers.get_all(name).iter().any(|value| {
                value.to_str().is_ok_and(|v| {
                    v.split(',')
                        .any(|part| part.trim().eq_ignore_ascii_case(token))
                })
            })
        };
        if !has(header::CONNECTION, "upgrade") || !has(header::UPGRADE, "websocket") {
            return Err(UpgradeError::Handshake(
                "Connection: upgrade, Upgrade: websocket",
            ));
        }
        if headers.get(header::SEC_WEBSOCKET_VERSION) != Some(&HeaderValue::from_static("13")) {
            return Err(UpgradeError::Handshake("Sec-WebSocket-Version: 13"));
        }
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or(UpgradeError::Handshake("Sec-WebSocket-Key"))?;
        let on_upgrade = extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or(UpgradeError::NotUpgradable)?;
        let deflate_offered = headers
            .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|offer| {
                offer
                    .split(';')
                    .next()
                    .is_some_and(|name| name.trim() == "permessage-deflate")
            });
        let offered = headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(',').map(|p| p.trim().to_owned()))
            .collect();
        Ok(Self {
            on_upgrade,
            accept: tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
            offered,
            protocol: None,
            origin: extensions.get::<Origin>().cloned(),
            config: super::handover::config(),
            deflate_offered,
            deflate: false,
        })
    }

    /// Agrees on the first of `protocols` the client offered (`Sec-WebSocket-Protocol`).
    #[must_use]
    pub fn protocols<'a>(mut self, protocols: impl IntoIterator<Item = &'a str>) -> Self {
        self.protocol = protocols
            .into_iter()
            .find(|p| self.offered.iter().any(|o| o == p))
            .map(str::to_owned);
        self
    }

    /// Takes permessage-deflate when the client offers it (browsers do): what the client
    /// sends may then come compressed; the server's messages go uncompressed. The
    /// decompressor's window lives in this process, so such a session cannot move to the next
    /// generation: at a stop it is closed with 1012 (and counted). Off by default, so that
    /// sessions move.
    #[must_use]
    pub fn deflate(mut self) -> Self {
        self.deflate = true;
        self
    }

    /// The largest message accepted from the client (default: tungstenite's, 64 MiB).
    #[must_use]
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.config = self.config.max_message_size(Some(bytes));
        self
    }

    /// Answers the handshake (101) and runs `handler` on the session once the connection is
    /// upgraded, starting from `state`.
    pub fn on_upgrade<S, F, Fut>(self, state: S, handler: F) -> axum::response::Response
    where
        S: Serialize + Send + 'static,
        F: FnOnce(Session<S>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let deflate = self.deflate && self.deflate_offered;
        let Self {
            on_upgrade,
            accept,
            protocol,
            origin,
            mut config,
            ..
        } = self;
        if deflate {
            // The decompressed messages reach the codec as unmasked frames.
            config = config.accept_unmasked_frames(true);
        }
        let mut response = axum::response::Response::new(axum::body::Body::empty());
        *response.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if let Some(value) = protocol
            .as_deref()
            .and_then(|p| HeaderValue::from_str(p).ok())
        {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, value);
        }
        if deflate {
            let value = HeaderValue::from_static("permessage-deflate");
            headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, value);
        }
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let (io, read) = SessionIo::from_upgraded(upgraded);
            let (io, read) = match deflate {
                true => {
                    let limit = config.max_message_size.unwrap_or(usize::MAX);
                    (io.inflated(read, limit), Vec::new())
                }
                false => (io, read),
            };
            let movable = io.is_plain();
            let socket =
                WebSocketStream::from_raw_socket(Tap::new(io, read), Role::Server, Some(config))
                    .await;
            let session = Session::new(socket, state, protocol, config, origin, movable, false);
            handler(session).await;
        });
        response
    }
}

/// Sets what runs a session handed over by a worker of the previous generation: usually the
/// same function the [`Upgrade::on_upgrade`] handler runs (check [`Session::resumed`] to skip
/// a greeting). Call it once, before serving; a second call changes nothing (false).
pub fn resume<S, F, Fut>(handler: F) -> bool
where
    S: Serialize + DeserializeOwned + Send + 'static,
    F: Fn(Session<S>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handler = Arc::new(handler);
    crate::resume::register(Box::new(move |resumed: Resumed| {
        let handler = handler.clone();
        let resuming: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
            if let Some(session) = Session::resume(resumed).await {
                COUNTS.resumed.inc();
                handler(session).await;
            }
        });
        resuming
    }))
}

pub use super::handover::Session;
