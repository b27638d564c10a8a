//! WebSockets through restarts (feature `ws`), two ways:
//!
//! * **Sessions that move** ([`Upgrade`], [`Session`], [`resume`]): when the worker stops,
//!   each session between two messages goes, with its socket, its unread bytes and the
//!   application's state, to a worker of the next generation, which resumes it. The client
//!   sees nothing. See [`Session`] and the `ws-echo` and `ws-chat` examples.
//! * **Sessions that say goodbye properly** ([`Draining`], over axum's own `WebSocket`): at
//!   its session's turn of the worker's drain it sends Close 1012 ("service restart", RFC
//!   6455 §7.4 as registered by IANA) and waits for the client's Close, so the client sees a
//!   clean close it knows to reconnect after, never a reset (1006), and the sessions of a
//!   worker are told a few at a time over the drain's spread.
//!
//! A session that moves, in ten lines:
//!
//! ```no_run
//! use cluster_worker::ws::{Session, Upgrade};
//!
//! async fn echo(mut session: Session<u64>) {
//!     while let Some(message) = session.recv().await {
//!         *session.state_mut() += 1; // what moves with the session
//!         if message.is_text() && session.send(message).await.is_err() {
//!             return;
//!         }
//!     }
//! }
//! async fn route(upgrade: Upgrade) -> axum::response::Response {
//!     upgrade.on_upgrade(0u64, echo)
//! }
//! # async fn main_() {
//! cluster_worker::ws::resume(echo); // sessions handed over by the previous generation
//! let router: axum::Router = axum::Router::new().route("/ws", axum::routing::get(route));
//! # }
//! ```
//!
//! The goodbye over axum's socket:
//!
//! ```no_run
//! use axum::extract::ws::{Message, WebSocketUpgrade};
//! use axum::response::IntoResponse;
//!
//! async fn echo(upgrade: WebSocketUpgrade) -> impl IntoResponse {
//!     upgrade.on_upgrade(|socket| async move {
//!         let mut socket = cluster_worker::ws::Draining::new(socket);
//!         while let Some(Ok(message)) = socket.recv().await {
//!             if let Message::Text(_) | Message::Binary(_) = message {
//!                 if socket.send(message).await.is_err() {
//!                     return;
//!                 }
//!             }
//!         }
//!     })
//! }
//! ```

mod handover;
mod inflate;
mod io;
mod session;
mod tap;
#[cfg(test)]
mod testing;

use axum::extract::ws::{CloseFrame, Message, WebSocket};

pub use self::session::{Session, Upgrade, UpgradeError, resume};
use crate::drain::{self, Turn};
/// The WebSocket library sessions speak through (its `Message` is what a [`Session`] sends
/// and receives).
pub use tokio_tungstenite::tungstenite;

/// The close code for a server that restarts (IANA's WebSocket registry).
pub const SERVICE_RESTART: u16 = crate::resume::SERVICE_RESTART;

/// An axum `WebSocket` that closes with [`SERVICE_RESTART`] at its turn of the drain.
pub struct Draining {
    socket: WebSocket,
    turn: Turn,
    /// Once our Close is sent: until when the client's is waited for.
    closing: Option<tokio::time::Instant>,
}

impl std::fmt::Debug for Draining {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Draining")
            .field("closing", &self.closing)
            .finish_non_exhaustive()
    }
}

impl Draining {
    /// Wraps `socket`; its turn of the drain is taken now.
    pub fn new(socket: WebSocket) -> Self {
        Self {
            socket,
            turn: drain::turn(),
            closing: None,
        }
    }

    /// The next message from the client. At the session's turn of the drain, a Close 1012
    /// goes out first; the client's answering Close is returned, then `None`. A client that
    /// does not answer is cut at the drain's hard cap (`None`).
    pub async fn recv(&mut self) -> Option<Result<Message, axum::Error>> {
        loop {
            if let Some(deadline) = self.closing {
                // A client that never answers gets `None` at the hard cap.
                return tokio::time::timeout_at(deadline, self.socket.recv())
                    .await
                    .unwrap_or_default();
            }
            tokio::select! {
                biased;
                message = self.socket.recv() => return message,
                notice = &mut self.turn => {
                    let deadline = tokio::time::Instant::from_std(notice.deadline());
                    self.closing = Some(deadline);
                    let close = CloseFrame {
                        code: SERVICE_RESTART,
                        reason: "service restart".into(),
                    };
                    // A client that stops reading cannot hold the Close (nor us) past the cap.
                    let sent = self.socket.send(Message::Close(Some(close)));
                    if !matches!(tokio::time::timeout_at(deadline, sent).await, Ok(Ok(()))) {
                        return None;
                    }
                }
            }
        }
    }

    /// Sends a message (refused once the Close went out).
    ///
    /// # Errors
    /// When the connection failed or is closing.
    pub async fn send(&mut self, message: Message) -> Result<(), axum::Error> {
        self.socket.send(message).await
    }

    /// Whether the goodbye went out.
    pub fn is_closing(&self) -> bool {
        self.closing.is_some()
    }

    /// The axum socket (no goodbye at the drain from then on).
    pub fn into_inner(self) -> WebSocket {
        self.socket
    }
}
