//! One HTTP/1.1 connection: served with upgrades (WebSocket), and when the worker stops (or
//! a rebalancing chose it), ended at its next idle moment and handed back to the watcher with
//! the bytes read from it but not used, for another worker: the client never notices.
//!
//! A connection whose request was in flight when the stop came is answered first (then
//! handed back); a fresh one gets [`FIRST_REQUEST_GRACE`] for its first request; an upgraded
//! one belongs to the application from then on (its WebSocket drains in its own way).

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cluster_ipc::ListenAddress;
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::io::HoldIo;
use super::{BoxError, Traced};
use crate::ClientStream;
use crate::link::Link;

/// How long a connection accepted just before the stop may take to send its first request:
/// hyper would close it at once ("idle"), and a client whose request is already on the wire
/// would see its connection reset, when the whole cluster stops and nobody takes it over.
pub(super) const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// Serves one plain HTTP/1.1 connection; once `stopped` turns true, ends it gracefully and,
/// when it ended idle between requests, hands it back.
pub(super) async fn serve_plain<S, B>(
    stream: ClientStream,
    service: Traced<S>,
    stopped: watch::Receiver<bool>,
    hand_back: Option<(Arc<Link>, ListenAddress)>,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let Some((link, address)) = hand_back else {
        serve(stream, service, stopped, false).await;
        return;
    };
    let Some((stream, read)) = serve(stream, service, stopped, true).await else {
        return;
    };
    let (socket, mut prefix) = stream.into_parts();
    prefix.extend_from_slice(&read);
    if let Err(socket) = link.handoff.hand_back(socket, address, &prefix).await {
        tracing::debug!("could not hand the connection back; closing it");
        drop(socket);
    }
}

/// Completes when a rebalancing chose this connection: at the first idle moment after an
/// ask (within [`IDLE_PATIENCE`]), with a unit of the budget claimed.
async fn rebalanced(activity: Arc<super::activity::Activity>) {
    loop {
        crate::rebalance::asked().await;
        if activity.requested()
            && activity.next_idle(IDLE_PATIENCE).await.is_some()
            && crate::rebalance::claim()
        {
            return;
        }
    }
}

/// How long a connection asked to go waits for an idle moment before it lets the ask pass.
const IDLE_PATIENCE: Duration = Duration::from_secs(1);

/// Serves one HTTP/1.1 connection (any transport); once `stopped` turns true, ends it
/// gracefully. With `hold`, a connection that ended idle between requests is not shut down
/// but returned, with the bytes read from it and not used, to be handed on.
pub(super) async fn serve<S, B, I>(
    io: I,
    service: Traced<S>,
    mut stopped: watch::Receiver<bool>,
    hold_back: bool,
) -> Option<(I, hyper::body::Bytes)>
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
    let rebalanced = rebalanced(activity.clone());
    let io = HoldIo::new(io);
    let hold = io.hold();
    let mut connection = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .with_upgrades();
    // The stop, or (for a connection that can be handed back) a rebalancing that chose it:
    // either way it ends at its next idle moment.
    let mut stop = pin!(async move {
        tokio::select! {
            _ = stopped.wait_for(|stopped| *stopped) => {}
            () = rebalanced, if hold_back => {}
        }
    });
    let (mut stop_seen, mut shutting_down) = (false, false);
    let mut grace: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let ended = std::future::poll_fn(|cx| {
        if !stop_seen && stop.as_mut().poll(cx).is_ready() {
            stop_seen = true;
        }
        if stop_seen && !shutting_down {
            // Idle between requests: it ends now. Busy: it finishes its request first. Fresh
            // (no request yet): its first request gets a moment to arrive.
            let fresh = !activity.requested();
            let expired = fresh
                && grace
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(FIRST_REQUEST_GRACE)))
                    .as_mut()
                    .poll(cx)
                    .is_ready();
            if !fresh || expired {
                shutting_down = true;
                // Handed back whole: no FIN for the client.
                hold.store(hold_back, Ordering::SeqCst);
                Pin::new(&mut connection).graceful_shutdown();
            }
        }
        let polled = Pin::new(&mut connection).poll(cx);
        if polled.is_pending() && stop_seen && !shutting_down && activity.requested() {
            // Its first request began during that poll: it is answered, then the end.
            shutting_down = true;
            hold.store(hold_back, Ordering::SeqCst);
            Pin::new(&mut connection).graceful_shutdown();
            return Pin::new(&mut connection).poll(cx);
        }
        polled
    })
    .await;
    if let Err(e) = ended {
        tracing::debug!(error = %e, "connection ended with an error");
        return None;
    }
    if !(hold_back && shutting_down) {
        return None;
    }
    // `None`: it was upgraded (a WebSocket), and is the application's now.
    let parts = connection.into_parts()?;
    Some((parts.io.into_inner(), parts.read_buf))
}
