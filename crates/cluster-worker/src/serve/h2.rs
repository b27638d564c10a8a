//! One HTTP/2 connection (h2c with prior knowledge, or `h2` by ALPN over TLS): its streams
//! are served concurrently; when the drain begins it gets the two-phase GOAWAY of RFC 9113
//! §6.8 (`NO_ERROR` with the largest stream id, a PING, then the last stream id it will
//! serve): at once if a stream is in flight, at its turn of the spread if it is idle. Its
//! streams in flight finish (a long one ends at its own turn, see [`drained`](crate::drained)), and it
//! closes when they are done. Clients open their next streams on a new connection, to a
//! worker of the next generation.

use std::future::Future;
use std::pin::{Pin, pin};

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};

use super::h1::FIRST_REQUEST_GRACE;
use super::{BoxError, Traced};
use crate::drain;

/// Serves one HTTP/2 connection until it ends (or is cut with the serve loop).
pub(super) async fn serve<S, B, I>(io: I, service: Traced<S>)
where
    S: Service<Request<Incoming>, Response = Response<B>> + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = service.activity();
    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), service);
    let mut connection = pin!(connection);
    let mut turn = drain::turn();
    let (mut began, mut turn_came, mut goodbye) = (false, false, false);
    let mut grace: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let ended = std::future::poll_fn(|cx| {
        turn_came = turn_came || Pin::new(&mut turn).poll(cx).is_ready();
        began = began || drain::has_begun();
        // Busy once the drain began: told at once, as its client needs a new connection for
        // its next request anyway. Idle: at its turn, spread with the others. A connection
        // still in its handshake would be dropped by hyper, not told: one that has sent no
        // request yet gets a moment to send its first, as HTTP/1.1's does.
        if !goodbye && (turn_came || (began && activity.busy())) {
            let expired = activity.requested()
                || grace
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(FIRST_REQUEST_GRACE)))
                    .as_mut()
                    .poll(cx)
                    .is_ready();
            if expired {
                goodbye = true;
                connection.as_mut().graceful_shutdown();
            }
        }
        let polled = connection.as_mut().poll(cx);
        let due_now = began && activity.busy() || turn_came && activity.requested();
        if polled.is_pending() && !goodbye && due_now {
            // A request began during that poll.
            goodbye = true;
            connection.as_mut().graceful_shutdown();
            return connection.as_mut().poll(cx);
        }
        polled
    })
    .await;
    if let Err(e) = ended {
        tracing::debug!(error = %e, "HTTP/2 connection ended with an error");
    }
}
