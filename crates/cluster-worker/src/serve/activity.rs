//! [`Activity`]: what a connection's service has seen, for the drain to decide how to end
//! the connection: whether a request ever came (a fresh connection gets a moment to send
//! its first), and how many are in flight (a busy HTTP/2 connection is told to go at once).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// One connection's requests, as its service counts them.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    requested: AtomicBool,
    in_flight: AtomicUsize,
    /// Woken when the last request in flight ends: the connection is idle.
    idle: tokio::sync::Notify,
}

impl Activity {
    /// Whether a request was ever made on the connection.
    pub(crate) fn requested(&self) -> bool {
        self.requested.load(Ordering::Relaxed)
    }

    /// Whether a request is in flight (its response not yet fully sent).
    pub(crate) fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
    }

    /// Completes at the connection's next idle moment between requests (at once if it is
    /// idle now), or `None` after `patience`.
    pub(crate) async fn next_idle(&self, patience: std::time::Duration) -> Option<()> {
        let idle = self.idle.notified();
        let mut idle = std::pin::pin!(idle);
        // Registered before looking, so an end in between is not missed.
        idle.as_mut().enable();
        if !self.busy() {
            return Some(());
        }
        tokio::time::timeout(patience, idle).await.ok()
    }

    /// A request begins; it is in flight until the guard is dropped (with its response's
    /// body, once sent).
    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
        self.requested.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        crate::link::REQUESTS.add_one();
        InFlight(self.clone())
    }
}

/// A request in flight, from its call to the end of its response.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
