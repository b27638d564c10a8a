//! HTTP/1.1 serving loops that restart without losing a keep-alive request: [`serve_http`]
//! for a hyper service, [`serve_axum`] for an axum `Router` (feature `axum`).
//!
//! When the watcher asks the worker to stop (a rolling restart, a scale-down), the loop
//! stops accepting, lets every request in flight finish, and hands every connection that is
//! idle between requests back to the watcher, with the bytes it had already read but not
//! used; the watcher passes it to a worker of the next generation, which reads the next
//! request from the kernel's buffer. The client never notices. Connections that cannot be
//! handed over are closed gracefully as before: one whose request was in flight when the
//! stop came is answered with `Connection: close` (its client reconnects), and upgrades
//! (WebSocket) end with the worker. HTTP/2 is not served by these loops. Standalone they
//! fall back to hyper's graceful shutdown.

use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cluster_ipc::ListenAddress;
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::link::{Link, link};
use crate::{ClientStream, Listener, Termination, await_termination};

type BoxError = Box<dyn StdError + Send + Sync>;

/// Serves HTTP/1.1 with `service` on `listener` until [`await_termination`] resolves, then
/// drains as the module docs say; returns why it stopped.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use http_body_util::Full;
/// use hyper::body::Bytes;
/// let listener = cluster_worker::listen("127.0.0.1:8080").await?;
/// let service = hyper::service::service_fn(|_request| async {
///     Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from("hi"))))
/// });
/// cluster_worker::serve_http(listener, service).await;
/// # Ok(()) }
/// ```
pub async fn serve_http<S, B>(listener: Listener, service: S) -> Termination
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    serve_with(listener, move |_peer| service.clone()).await
}

/// Serves an axum `Router` like [`serve_http`]; `ConnectInfo<SocketAddr>` extractors get the
/// client's address (the real peer in every balance mode).
#[cfg(feature = "axum")]
pub async fn serve_axum(listener: Listener, router: axum::Router) -> Termination {
    serve_with(listener, move |peer| WithPeer {
        router: router.clone(),
        peer,
    })
    .await
}

/// An axum router called with the client's address in the request's extensions.
#[cfg(feature = "axum")]
#[derive(Clone)]
struct WithPeer {
    router: axum::Router,
    peer: SocketAddr,
}

#[cfg(feature = "axum")]
impl Service<Request<Incoming>> for WithPeer {
    type Response = Response<axum::body::Body>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        use tower_service::Service as _;
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(self.peer));
        let mut router = self.router.clone();
        Box::pin(async move { router.call(request.map(axum::body::Body::new)).await })
    }
}

/// The loop behind both: `make` builds the service of one connection from its peer.
async fn serve_with<S, B>(listener: Listener, make: impl Fn(SocketAddr) -> S) -> Termination
where
    S: Service<Request<Incoming>, Response = Response<B>> + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    // In a cluster, stopped connections go back to the watcher.
    let hand_back = match (link(), listener.cluster_address()) {
        (Ok(link), Some(address)) => Some((link, address.clone())),
        _ => None,
    };
    let (stop, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    // One future for the whole loop: a signal arriving between two turns is not lost.
    let termination = await_termination();
    tokio::pin!(termination);
    let why = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let service = Boxed(Arc::new(make(peer)), Arc::default());
                    connections.spawn(serve_connection(stream, service, stopped.clone(), hand_back.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            why = &mut termination => break why,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    };
    drop(listener);
    let _ = stop.send(true);
    while connections.join_next().await.is_some() {}
    why
}

/// How long a connection accepted just before the stop may take to send its first request:
/// hyper would close it at once ("idle"), and a client whose request is already on the wire
/// would see its connection reset, when the whole cluster stops and nobody takes it over.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// A service whose futures are boxed, so a connection can be polled without being pinned
/// (needed to take its socket back afterwards); it notes that a request arrived.
struct Boxed<S>(Arc<S>, Arc<AtomicBool>);

impl<S, B> Service<Request<Incoming>> for Boxed<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<B>, S::Error>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.1.store(true, Ordering::Relaxed);
        Box::pin(self.0.call(request))
    }
}

/// Serves one connection; once `stopped` turns true, ends it gracefully and, when it ended
/// idle between requests, hands it back.
async fn serve_connection<S, B>(
    stream: ClientStream,
    service: Boxed<S>,
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
    let requested = service.1.clone();
    let mut connection =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
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
                Pin::new(&mut connection).graceful_shutdown();
            }
        }
        let polled = connection.poll_without_shutdown(cx);
        if polled.is_pending() && stop_seen && !shutting_down && requested.load(Ordering::Relaxed) {
            // Its first request began during that poll: it is answered, then the end.
            shutting_down = true;
            Pin::new(&mut connection).graceful_shutdown();
            return connection.poll_without_shutdown(cx);
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
    let parts = connection.into_parts();
    let (socket, mut prefix) = parts.io.into_inner().into_parts();
    prefix.extend_from_slice(&parts.read_buf);
    if let Err(socket) = link.handoff.hand_back(socket, address, &prefix).await {
        tracing::debug!("could not hand the connection back; closing it");
        drop(socket);
    }
}
