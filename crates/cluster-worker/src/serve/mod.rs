//! HTTP serving loops that restart without losing a request or dropping a long-lived
//! connection rudely: [`serve_http`] for a hyper service, [`serve_axum`] for an axum
//! `Router` (feature `axum`).
//!
//! * **HTTP/1.1 and HTTP/2 on one listener** (h2c with prior knowledge): each connection's
//!   first bytes tell which (`sniff`).
//! * **Upgrades** (axum's `WebSocketUpgrade`, hyper's `upgrade::on`) work as they do with
//!   hyper's own server; [`ws`](crate::ws) closes WebSockets with 1012 at the drain.
//! * **When the worker stops**, the loop stops accepting and drains (see [`drained`]):
//!   - an HTTP/1.1 connection idle between requests is handed back to the watcher with the
//!     bytes read from it, and a worker of the next generation serves its next request;
//!     one with a request in flight is answered first;
//!   - an HTTP/2 connection gets the two-phase GOAWAY at its turn of the drain; its streams
//!     in flight finish;
//!   - an event stream (`text/event-stream`) ends at its turn with a clean terminator;
//!   - whatever is still open at the drain's hard cap (the watcher's shutdown timeout) is
//!     cut, so the worker exits on its own before it would be killed.
//!
//! Standalone, a stop signal drains the same way (nothing is handed back).
//!
//! [`drained`]: crate::drained

mod accept;
mod activity;
mod body;
mod h1;
mod h2;
pub(crate) mod io;
mod serving;

use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use cluster_ipc::ListenAddress;
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

pub use self::accept::{Accept, HANDSHAKE_TIMEOUT, Negotiated};
use self::activity::Activity;
use self::body::ServeBody;
use self::serving::Serving;
use crate::drain::{self, Plan};
use crate::link::Link;
use crate::resume::Origin;
use crate::{ClientStream, Listener, Termination, await_termination};

pub(crate) type BoxError = Box<dyn StdError + Send + Sync>;

/// How long a stopping serve loop keeps taking the connections the watcher had already sent
/// it (the watcher closes the pipe as it asks for the stop, so this is the bound, not a wait).
const LEFTOVER_PATIENCE: Duration = Duration::from_secs(2);

/// Serves HTTP/1.1 and HTTP/2 with `service` on `listener` until [`await_termination`]
/// resolves, then drains as the module docs say; returns why it stopped.
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
    serve_with(
        listener,
        move |_peer| service.clone(),
        None::<Arc<NoHandshake>>,
    )
    .await
}

/// [`serve_http`] with a handshake first: TLS through `acceptor` (with feature `tls`, a
/// `tokio_rustls::TlsAcceptor` whose ALPN offers `h2` and `http/1.1`), HTTP/1.1 or HTTP/2
/// as it negotiated. Idle HTTP/1.1 connections are closed at a stop rather than handed on
/// (see [`Accept`]).
pub async fn serve_http_with<A, S, B>(listener: Listener, acceptor: A, service: S) -> Termination
where
    A: Accept,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    serve_with(
        listener,
        move |_peer| service.clone(),
        Some(Arc::new(acceptor)),
    )
    .await
}

/// The acceptor of the plain loops, never called: they sniff HTTP/2 from the first bytes.
struct NoHandshake;

impl Accept for NoHandshake {
    type Stream = ClientStream;

    async fn accept(&self, stream: ClientStream) -> std::io::Result<(ClientStream, Negotiated)> {
        Ok((stream, Negotiated::Http1))
    }
}

/// Serves an axum `Router` like [`serve_http`]; `ConnectInfo<SocketAddr>` extractors get the
/// client's address (the real peer in every balance mode).
#[cfg(feature = "axum")]
pub async fn serve_axum(listener: Listener, router: axum::Router) -> Termination {
    let make = move |peer| WithPeer {
        router: router.clone(),
        peer,
    };
    serve_with(listener, make, None::<Arc<NoHandshake>>).await
}

/// [`serve_axum`] with a handshake first, as [`serve_http_with`].
#[cfg(feature = "axum")]
pub async fn serve_axum_with<A: Accept>(
    listener: Listener,
    acceptor: A,
    router: axum::Router,
) -> Termination {
    let make = move |peer| WithPeer {
        router: router.clone(),
        peer,
    };
    serve_with(listener, make, Some(Arc::new(acceptor))).await
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

/// The application's service as a connection runs it: its requests counted (see
/// [`Activity`]), and event streams ended at the drain.
pub(crate) struct Traced<S> {
    service: Arc<S>,
    activity: Arc<Activity>,
    /// Where a session made on this connection goes at a stop (given to upgrade requests).
    origin: Option<Origin>,
}

impl<S> Clone for Traced<S> {
    fn clone(&self) -> Self {
        Self {
            service: self.service.clone(),
            activity: self.activity.clone(),
            origin: self.origin.clone(),
        }
    }
}

impl<S> Traced<S> {
    fn new(service: S, origin: Option<Origin>) -> Self {
        Self {
            service: Arc::new(service),
            activity: Arc::default(),
            origin,
        }
    }

    fn activity(&self) -> Arc<Activity> {
        self.activity.clone()
    }
}

impl<S, B> Service<Request<Incoming>> for Traced<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = Response<ServeBody<B>>;
    type Error = S::Error;
    type Future = Answer<S::Future>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        // Only an upgrade can become a session (the extension costs an allocation).
        if let Some(origin) = &self.origin
            && request.headers().contains_key(hyper::header::UPGRADE)
        {
            request.extensions_mut().insert(origin.clone());
        }
        Answer {
            in_flight: Some(self.activity.begin()),
            answer: self.service.call(request),
        }
    }
}

pin_project_lite::pin_project! {
    /// The application's answer to one request, its body wrapped once it comes (no
    /// allocation per request: HTTP/2 answers every stream with one).
    pub(crate) struct Answer<F> {
        #[pin]
        answer: F,
        in_flight: Option<activity::InFlight>,
    }
}

impl<F, B, E> Future for Answer<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ServeBody<B>>, E>;

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.answer.poll(cx))?;
        let in_flight = this
            .in_flight
            .take()
            .expect("an answer is polled to its end once");
        std::task::Poll::Ready(Ok(body::wrap(response, in_flight)))
    }
}

/// The loop behind them all: `make` builds the service of one connection from its peer;
/// with an `acceptor`, each connection's handshake comes first.
async fn serve_with<S, B, A: Accept>(
    listener: Listener,
    make: impl Fn(SocketAddr) -> S,
    acceptor: Option<Arc<A>>,
) -> Termination
where
    S: Service<Request<Incoming>, Response = Response<B>> + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let mut serving = Serving::new(&listener, make, acceptor);
    // One future for the whole loop: a signal arriving between two turns is not lost.
    let termination = await_termination();
    tokio::pin!(termination);
    let why = {
        // Kept across turns too: a finished connection wakes this loop, and building the
        // accept again each time would cost its setup once more per connection.
        let accept = listener.accept();
        tokio::pin!(accept);
        loop {
            tokio::select! {
                accepted = &mut accept => {
                    accept.set(listener.accept());
                    match accepted {
                        Ok((stream, peer)) => serving.spawn(stream, peer),
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed; retrying in 100 ms");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                why = &mut termination => break why,
                Some(_) = serving.connections.join_next(), if !serving.connections.is_empty() => {}
            }
        }
    };
    // A signal (or standalone): the drain begins here; from the watcher, it began already.
    drain::begin(Plan {
        spread: Duration::ZERO,
        timeout: drain::DEFAULT_TIMEOUT,
    });
    serving.stop();
    // What the watcher sent before it asked this worker to stop (it closes the pipe as it
    // asks): taken and drained like the rest, never dropped with the process.
    if why == Termination::StopRequested {
        let leftovers = async {
            while let Some((stream, peer)) = listener.accept_transferred().await {
                serving.spawn(stream, peer);
            }
        };
        let _ = tokio::time::timeout(LEFTOVER_PATIENCE, leftovers).await;
    }
    drop(listener);
    serving.finish().await;
    why
}

/// Serves one plain connection, HTTP/2 or HTTP/1.1 as its first bytes say.
async fn serve_connection<S, B>(
    mut stream: ClientStream,
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
    match sniff(&mut stream).await {
        Protocol::Http2 => h2::serve(stream, service).await,
        Protocol::Http1 => h1::serve_plain(stream, service, stopped, hand_back).await,
        Protocol::Gone => {}
    }
}

/// What a connection speaks.
enum Protocol {
    Http1,
    Http2,
    /// It closed (or failed) before saying.
    Gone,
}

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How much the first read asks for: a whole request head, as a rule, so the protocol's own
/// first read finds it here instead of making a second system call (a new-connection
/// request then costs one read, as in a plain hyper server).
const FIRST_READ: usize = 4096;

/// Reads as much of the connection's first bytes as it takes to tell (the HTTP/2 preface,
/// or anything else), and puts them back for the protocol to read.
async fn sniff(stream: &mut ClientStream) -> Protocol {
    // On the heap: a buffer held across the await would grow every connection's future.
    let mut seen = Vec::with_capacity(FIRST_READ);
    while seen.len() < PREFACE.len() {
        match stream.read_buf(&mut seen).await {
            Ok(0) | Err(_) if seen.is_empty() => return Protocol::Gone,
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if !PREFACE.starts_with(&seen[..seen.len().min(PREFACE.len())]) {
            break;
        }
    }
    let http2 = seen.starts_with(PREFACE);
    stream.unread(seen);
    if http2 {
        Protocol::Http2
    } else {
        Protocol::Http1
    }
}
