//! WebSockets that say goodbye properly (feature `ws`): [`Draining`] wraps an axum
//! `WebSocket`; at its session's turn of the worker's drain it sends Close 1012 ("service
//! restart", RFC 6455 §7.4 as registered by IANA) and waits for the client's Close, so the
//! client sees a clean close it knows to reconnect after, never a reset (1006), and the
//! sessions of a worker are told a few at a time over the drain's spread.
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

use axum::extract::ws::{CloseFrame, Message, WebSocket};

use crate::drain::{self, Turn};

/// The close code for a server that restarts (IANA's WebSocket registry).
pub const SERVICE_RESTART: u16 = 1012;

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
