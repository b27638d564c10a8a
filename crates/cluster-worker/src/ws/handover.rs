//! [`Session`]: one WebSocket session, with the application's state, that moves to the
//! next generation when its worker stops (see [`session`](super::session)).

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error, Message};

use cluster_ipc::session::{SessionHandover, SessionKind};

use super::io::SessionIo;
use super::tap::Tap;
use crate::resume::{COUNTS, Origin, Resumed, SERVICE_RESTART, close_restarting};

type Socket = WebSocketStream<Tap<SessionIo>>;

/// A WebSocket session and the application's state `S`. Read with [`recv`](Self::recv) in
/// one task (a `select!` with the application's other events is fine: it is cancel-safe);
/// when it returns `None` the session ended, or (when [`is_moving`](Self::is_moving)) it is
/// leaving for the next generation: return, and the session goes when it is dropped, with
/// the state as it was then.
pub struct Session<S: Serialize + Send + 'static> {
    socket: Option<Socket>,
    state: S,
    protocol: Option<String>,
    config: WebSocketConfig,
    origin: Option<Origin>,
    /// On the client's own socket, in a cluster: it can leave.
    movable: bool,
    resumed: bool,
    /// The drain began: when what is left is cut.
    draining: Option<Instant>,
    moving: bool,
    ended: bool,
}

impl<S: Serialize + Send + 'static> std::fmt::Debug for Session<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("protocol", &self.protocol)
            .field("movable", &self.movable)
            .field("resumed", &self.resumed)
            .field("moving", &self.moving)
            .finish_non_exhaustive()
    }
}

impl<S: Serialize + Send + 'static> Session<S> {
    pub(super) fn new(
        socket: Socket,
        state: S,
        protocol: Option<String>,
        config: WebSocketConfig,
        origin: Option<Origin>,
        movable: bool,
        resumed: bool,
    ) -> Self {
        Self {
            socket: Some(socket),
            state,
            protocol,
            config,
            movable: movable && origin.is_some(),
            origin,
            resumed,
            draining: None,
            moving: false,
            ended: false,
        }
    }

    /// The application's state.
    pub fn state(&self) -> &S {
        &self.state
    }

    /// The application's state, to change: what moves with the session is what it holds
    /// when the session leaves.
    pub fn state_mut(&mut self) -> &mut S {
        &mut self.state
    }

    /// The subprotocol agreed on at the handshake.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// Whether this session was handed over by a worker of the previous generation.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// Whether the session is leaving for the next generation (after [`recv`](Self::recv)
    /// returned `None`).
    pub fn is_moving(&self) -> bool {
        self.moving
    }

    /// Sends a message (the whole message: a session never leaves in the middle of one).
    ///
    /// # Errors
    /// When the connection failed or is closing.
    pub async fn send(&mut self, message: Message) -> Result<(), Error> {
        match self.socket.as_mut() {
            Some(socket) if !self.moving => socket.send(message).await,
            _ => Err(Error::AlreadyClosed),
        }
    }

    /// The next message from the client; `None` once the session ended or is leaving (see
    /// the type's docs). Pings are answered by the library and returned too.
    pub async fn recv(&mut self) -> Option<Message> {
        loop {
            if self.ended || self.moving {
                return None;
            }
            if self.draining.is_none() && crate::drain::has_begun() {
                self.draining = Some(crate::drain::begun().await);
            }
            if let Some(cap) = self.draining {
                return self.recv_draining(cap).await;
            }
            let socket = self.socket.as_mut()?;
            let next = tokio::select! {
                biased;
                cap = crate::drain::begun() => Err(cap),
                message = socket.next() => Ok(message),
            };
            match next {
                Err(cap) => self.draining = Some(cap),
                Ok(message) => return self.seen(message),
            }
        }
    }

    /// Once the drain began: leave at a message boundary, or finish the message under way
    /// first (within the drain's cap); a session that cannot leave says goodbye with 1012.
    async fn recv_draining(&mut self, cap: Instant) -> Option<Message> {
        if !self.movable {
            self.goodbye(cap).await;
            return None;
        }
        if self.socket.as_ref()?.get_ref().at_boundary() {
            self.moving = true;
            return None;
        }
        let next = tokio::time::timeout_at(cap, self.socket.as_mut()?.next()).await;
        match next {
            Ok(message) => self.seen(message),
            Err(_) => {
                self.goodbye(cap + std::time::Duration::from_secs(1)).await;
                None
            }
        }
    }

    /// A message (or the end) read from the client.
    fn seen(&mut self, message: Option<Result<Message, Error>>) -> Option<Message> {
        match message {
            Some(Ok(message)) => {
                if matches!(message, Message::Close(_)) {
                    self.ended = true;
                }
                Some(message)
            }
            _ => {
                self.ended = true;
                None
            }
        }
    }

    /// Close 1012, the client's Close awaited until `cap`; counted as a session that could
    /// not move.
    async fn goodbye(&mut self, cap: Instant) {
        self.ended = true;
        COUNTS.closed.inc();
        let Some(socket) = self.socket.as_mut() else {
            return;
        };
        let close = CloseFrame {
            code: SERVICE_RESTART.into(),
            reason: "service restart".into(),
        };
        let _ = tokio::time::timeout_at(cap, async {
            socket.send(Message::Close(Some(close))).await?;
            while let Some(message) = socket.next().await {
                if matches!(message?, Message::Close(_)) {
                    break;
                }
            }
            Ok::<_, Error>(())
        })
        .await;
    }
}

impl<S: Serialize + DeserializeOwned + Send + 'static> Session<S> {
    /// The session a worker of the previous generation handed over; `None` (closed with
    /// 1012, counted) when it cannot be resumed here.
    pub(super) async fn resume(resumed: Resumed) -> Option<Self> {
        let Resumed {
            stream,
            handover,
            origin,
        } = resumed;
        let state = postcard::from_bytes::<S>(&handover.state);
        let (
            SessionKind::WebSocket {
                protocol,
                max_message_size,
                max_frame_size,
            },
            Ok(state),
        ) = (handover.kind, state)
        else {
            tracing::warn!(
                "a session handed over whose state this program cannot read; closed with 1012"
            );
            COUNTS.closed.inc();
            close_restarting(stream).await;
            return None;
        };
        let size = |limit: Option<u64>| limit.and_then(|n| usize::try_from(n).ok());
        let config = config()
            .max_message_size(size(max_message_size))
            .max_frame_size(size(max_frame_size));
        // The stream replays the client's unread bytes first.
        let tap = Tap::new(SessionIo::Plain(stream), Vec::new());
        let socket = WebSocketStream::from_raw_socket(tap, Role::Server, Some(config)).await;
        Some(Self::new(
            socket, state, protocol, config, origin, true, true,
        ))
    }
}

impl<S: Serialize + Send + 'static> Drop for Session<S> {
    fn drop(&mut self) {
        if !self.moving {
            return;
        }
        let (Some(socket), Some(origin)) = (self.socket.take(), self.origin.take()) else {
            return;
        };
        let handover = postcard::to_allocvec(&self.state).map(|state| SessionHandover {
            kind: SessionKind::WebSocket {
                protocol: self.protocol.take(),
                max_message_size: self.config.max_message_size.map(|n| n as u64),
                max_frame_size: self.config.max_frame_size.map(|n| n as u64),
            },
            state,
        });
        let cap = self.draining.unwrap_or_else(Instant::now);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(hand_over(socket, handover, origin, cap));
        }
    }
}

/// A session's codec settings: the tap gives the codec at most a read's worth at a time,
/// so its read buffer need not be tungstenite's eager 128 KiB (a worker that takes over
/// hundreds of sessions at once would allocate and touch that much for each).
pub(super) fn config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(super::tap::CHUNK)
}

/// Hands a session that stopped between two messages to the watcher, for the next
/// generation: its last message flushed, its socket, what the client sent that nobody read
/// and its record; closed with 1012 if any of it fails.
async fn hand_over(
    mut socket: Socket,
    handover: Result<SessionHandover, postcard::Error>,
    origin: Origin,
    cap: Instant,
) {
    if !matches!(
        tokio::time::timeout_at(cap, socket.flush()).await,
        Ok(Ok(()))
    ) {
        COUNTS.closed.inc();
        return;
    }
    let Some((SessionIo::Plain(stream), mut unread)) = socket.into_inner().take_stream() else {
        return;
    };
    let (tcp, rest, held) = stream.into_parts_held();
    unread.extend_from_slice(&rest);
    let prefix = match handover.map(|h| h.to_prefix(&unread)) {
        Ok(Ok(prefix)) => prefix,
        error => {
            tracing::warn!(
                ?error,
                "a session whose state cannot be handed over; closed with 1012"
            );
            COUNTS.closed.inc();
            close_restarting(tcp).await;
            return;
        }
    };
    match origin
        .link
        .handoff
        .hand_back(tcp, origin.address, &prefix)
        .await
    {
        Ok(()) => {
            COUNTS.handed_over.inc();
        }
        Err(tcp) => {
            COUNTS.closed.inc();
            close_restarting(tcp).await;
        }
    }
    drop(held);
}
