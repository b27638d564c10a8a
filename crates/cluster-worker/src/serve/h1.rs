//! One HTTP/1.1 connection: served with upgrades (WebSocket), and when the worker stops,
//! ended at its next idle moment and handed back to the watcher with the bytes read from it
//! but not used, for a worker of the next generation: the client never notices.
//!
//! A connection whose request was in flight when the stop came is answered first (then
//! handed back); a fresh one gets [`FIRST_REQUEST_GRACE`] for its first request; an upgraded
//! one belongs to the application from then on (its WebSocket drains in its own way).

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cluster_ipc::ListenAddress;
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use tokio::sync::watch;

use super::io::HoldIo;
use super::{BoxError, Traced};
use crate::ClientStream;
use crate::link::Link;

/// How long a connection accepted just before the stop may take to send its first request:
/// hyper would close it at once ("idle"), and a client whose request is already on the wire
/// would see its connection reset, when the whole cluster stops and nobody takes it over.
pub(super) const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// Serves one HTTP/1.1 connection; once `stopped` turns true, ends it gracefully and, when
/// it ended idle between requests, hands it back.
pub(super) async fn serve<S, B>(
    stream: ClientStream,
    service: Traced<S>,
    mut stopped: watch::Receiver<bool>,
    hand_back: Option<(Arc<Link>, ListenAddress)>,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let requested = service.requested();
    let io = HoldIo::new(stream);
    let hold = io.hold();
    let mut connection = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .with_upgrades();
    let mut stop = pin!(async move {
        let _ = stopped.wait_for(|stopped| *stopped).await;
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
            let fresh = !requested.load(Ordering::Relaxed);
            let expired = fresh
                && grace
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(FIRST_REQUEST_GRACE)))
                    .as_mut()
                    .poll(cx)
                    .is_ready();
            if !fresh || expired {
                shutting_down = true;
                // Handed back whole: no FIN for the client.
                hold.store(hand_back.is_some(), Ordering::SeqCst);
                Pin::new(&mut connection).graceful_shutdown();
            }
        }
        let polled = Pin::new(&mut connection).poll(cx);
        if polled.is_pending() && stop_seen && !shutting_down && requested.load(Ordering::Relaxed) {
            // Its first request began during that poll: it is answered, then the end.
            shutting_down = true;
            hold.store(hand_back.is_some(), Ordering::SeqCst);
            Pin::new(&mut connection).graceful_shutdown();
            return Pin::new(&mut connection).poll(cx);
        }
        polled
    })
    .await;
    if let Err(e) = ended {
        tracing::debug!(error = %e, "connection ended with an error");
        return;
    }
    let (Some((link, address)), true) = (hand_back, shutting_down) else {
        return;
    };
    // `None`: it was upgraded (a WebSocket), and is the application's now.
    let Some(parts) = connection.into_parts() else {
        return;
    };
    let (socket, mut prefix) = parts.io.into_inner().into_parts();
    prefix.extend_from_slice(&parts.read_buf);
    if let Err(socket) = link.handoff.hand_back(socket, address, &prefix).await {
        tracing::debug!("could not hand the connection back; closing it");
        drop(socket);
    }
}

/// Whether a request was ever made on a connection (set by its service).
pub(super) type Requested = Arc<AtomicBool>;
