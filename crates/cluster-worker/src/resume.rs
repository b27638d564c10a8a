//! Sessions handed over by a stopping worker of the previous generation (a WebSocket
//! between two messages: see [`ws`](crate::ws)): given to the application's resume handler,
//! or, when this worker has none (a program built without the `ws` feature, or one that did
//! not call [`ws::resume`](crate::ws::resume)), or the record cannot be read, closed cleanly
//! with 1012 ("service restart") so the client reconnects knowing why. Counted either way
//! in the application's metrics (`cluster_sessions_resumed`, `cluster_sessions_closed`), which
//! the watcher merges over every worker.

use std::future::Future;
use std::pin::Pin;
use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use cluster_ipc::ListenAddress;
use cluster_ipc::session::{SessionError, SessionHandover};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::ClientStream;

/// Where a session goes when this worker stops: the watcher's client pipe, for the listener
/// it came through.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub(crate) link: std::sync::Arc<crate::link::Link>,
    pub(crate) address: ListenAddress,
}

/// A session handed over, for the resume handler.
pub(crate) struct Resumed {
    pub(crate) stream: ClientStream,
    pub(crate) handover: SessionHandover,
    pub(crate) origin: Option<Origin>,
}

type Handler = Box<dyn Fn(Resumed) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

static HANDLER: OnceLock<Handler> = OnceLock::new();

/// Sets the resume handler (the first call wins); false if one was set already.
#[cfg_attr(not(feature = "ws"), allow(dead_code))]
pub(crate) fn register(handler: Handler) -> bool {
    HANDLER.set(handler).is_ok()
}

/// The counts of sessions moved and closed, in the application's registry.
pub(crate) struct Counts {
    pub(crate) resumed: Counter,
    pub(crate) handed_over: Counter,
    pub(crate) closed: Counter,
}

pub(crate) static COUNTS: LazyLock<Counts> = LazyLock::new(|| {
    let counts = Counts {
        resumed: Counter::default(),
        handed_over: Counter::default(),
        closed: Counter::default(),
    };
    let mut registry = crate::metrics::registry();
    registry.register(
        "cluster_sessions_resumed",
        "Live sessions taken over from a worker of the previous generation",
        counts.resumed.clone(),
    );
    registry.register(
        "cluster_sessions_handed_over",
        "Live sessions handed to the next generation when this worker stopped",
        counts.handed_over.clone(),
    );
    registry.register(
        "cluster_sessions_closed",
        "Live sessions closed with 1012 at a stop instead of moving (cannot move, or not taken)",
        counts.closed.clone(),
    );
    counts
});

/// Serves a connection that came with a session (see the module docs).
pub(crate) async fn resume(
    stream: ClientStream,
    session: Result<SessionHandover, SessionError>,
    origin: Option<Origin>,
) {
    match (session, HANDLER.get()) {
        (Ok(handover), Some(handler)) => {
            handler(Resumed {
                stream,
                handover,
                origin,
            })
            .await;
        }
        (Ok(_), None) => {
            tracing::warn!(
                "a session was handed over, but this worker resumes none; closed with 1012"
            );
            COUNTS.closed.inc();
            close_restarting(stream).await;
        }
        (Err(e), _) => {
            tracing::warn!(error = %e, "a session handed over cannot be read; closed with 1012");
            COUNTS.closed.inc();
            close_restarting(stream).await;
        }
    }
}

/// The close code for a server that restarts (IANA's WebSocket registry).
pub(crate) const SERVICE_RESTART: u16 = 1012;

/// How long the client of a session closed at a stop has to answer the Close.
const CLOSE_PATIENCE: Duration = Duration::from_secs(2);

/// Ends a WebSocket that is between two messages cleanly: Close 1012 ("service restart"),
/// then the client's Close is read (at most [`CLOSE_PATIENCE`]), then the socket closes.
pub(crate) async fn close_restarting<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let reason = b"service restart";
    let mut close = vec![0x88, 2 + reason.len() as u8];
    close.extend_from_slice(&SERVICE_RESTART.to_be_bytes());
    close.extend_from_slice(reason);
    let _ = tokio::time::timeout(CLOSE_PATIENCE, async {
        stream.write_all(&close).await?;
        stream.flush().await?;
        // The client's frames until its Close.
        loop {
            let mut head = [0u8; 2];
            stream.read_exact(&mut head).await?;
            let length = match head[1] & 0x7f {
                126 => u64::from(stream.read_u16().await?),
                127 => stream.read_u64().await?,
                short => u64::from(short),
            };
            let mask = if head[1] & 0x80 != 0 { 4 } else { 0 };
            let skip = length + mask;
            tokio::io::copy(&mut (&mut stream).take(skip), &mut tokio::io::sink()).await?;
            if head[0] & 0x0f == 0x8 {
                return Ok::<_, std::io::Error>(());
            }
        }
    })
    .await;
    let _ = stream.shutdown().await;
}
