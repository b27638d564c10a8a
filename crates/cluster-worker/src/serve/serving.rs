//! [`Serving`]: the connections of one serve loop, and what each needs to be served: the
//! service it runs, its handshake, where it goes back to at a stop; and the drain at the end.

use std::net::SocketAddr;
use std::sync::Arc;

use cluster_ipc::ListenAddress;
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{Accept, BoxError, Traced, accept, serve_connection};
use crate::drain;
use crate::link::{Link, link};
use crate::resume::Origin;
use crate::stream::{Lease, Live};
use crate::{ClientStream, Listener};

/// The connections of one serve loop (see the module docs).
pub(super) struct Serving<M, A> {
    make: M,
    acceptor: Option<Arc<A>>,
    /// In a cluster: where an idle connection goes back to at a stop.
    hand_back: Option<(Arc<Link>, ListenAddress)>,
    /// The same, for the live sessions made on these connections.
    origin: Option<Origin>,
    stop: watch::Sender<bool>,
    stopped: watch::Receiver<bool>,
    live: Arc<Live>,
    pub(super) connections: JoinSet<()>,
}

impl<M, A, S, B> Serving<M, A>
where
    M: Fn(SocketAddr) -> S,
    A: Accept,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    pub(super) fn new(listener: &Listener, make: M, acceptor: Option<Arc<A>>) -> Self {
        let hand_back = match (link(), listener.cluster_address()) {
            (Ok(link), Some(address)) => Some((link, address.clone())),
            _ => None,
        };
        let origin = hand_back.as_ref().map(|(link, address)| Origin {
            link: link.clone(),
            address: address.clone(),
        });
        let (stop, stopped) = watch::channel(false);
        Self {
            make,
            acceptor,
            hand_back,
            origin,
            stop,
            stopped,
            live: Arc::default(),
            connections: JoinSet::new(),
        }
    }

    /// Serves a connection: a live session handed over resumes; anything else is HTTP.
    pub(super) fn spawn(&mut self, stream: ClientStream, peer: SocketAddr) {
        let mut stream = stream.with_lease(Lease::new(&self.live));
        if let Some(session) = stream.take_session() {
            let origin = self.origin.clone();
            self.connections
                .spawn(crate::resume::resume(stream, session, origin));
            return;
        }
        let service = Traced::new((self.make)(peer), self.origin.clone());
        let stopped = self.stopped.clone();
        match &self.acceptor {
            None => self.connections.spawn(serve_connection(
                stream,
                service,
                stopped,
                self.hand_back.clone(),
            )),
            Some(a) => self.connections.spawn(accept::serve_connection(
                a.clone(),
                stream,
                service,
                stopped,
            )),
        };
    }

    /// Tells every connection the worker stops.
    pub(super) fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits for every connection to end, at most until the drain's hard cap (then cuts
    /// them), and sends the final metrics.
    pub(super) async fn finish(mut self) {
        let (began, plan) = drain::started().expect("the drain began");
        let cut = began + drain::cut_after(plan.timeout);
        let live = self.live.clone();
        let connections = &mut self.connections;
        let finished = tokio::time::timeout_at(cut, async {
            while connections.join_next().await.is_some() {}
            // Upgraded connections (WebSockets) run in the application's tasks: they are
            // waited for through their sockets.
            live.idle().await;
        })
        .await;
        if finished.is_err() {
            let left = self.live.count();
            tracing::info!(
                connections = left,
                "the drain's hard cap passed; cutting the connections left"
            );
            self.connections.abort_all();
        }
        // The final values, after the last request: nothing counted is lost at a stop.
        if let Err(e) = crate::metrics::flush().await {
            tracing::debug!(error = %e, "the final metrics did not reach the watcher");
        }
    }
}
