//! Live rebalancing: the watcher asks this worker to hand back some of its keep-alive
//! connections (after a scale-up or a respawn left another worker with too few) and keeps it
//! serving. Each HTTP/1.1 connection that can be handed back waits in [`asked`]; a request
//! sets a budget and wakes them, each waits for its next idle moment between requests (a
//! request in flight is answered first, and the connection stays open for the client), and
//! the first `count` to [`claim`] a unit go back to the watcher with the bytes read from
//! them, exactly as at a stop, for the worker it picks.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::Notify;

struct Release {
    /// Connections still to hand back for the last request.
    budget: AtomicU32,
    /// Woken at each request.
    asked: Notify,
}

static RELEASE: LazyLock<Release> = LazyLock::new(|| Release {
    budget: AtomicU32::new(0),
    asked: Notify::new(),
});

/// The watcher asks for `count` connections back (replacing what was left of an earlier
/// request).
pub(crate) fn release(count: u32) {
    RELEASE.budget.store(count, Ordering::SeqCst);
    RELEASE.asked.notify_waiters();
}

/// Completes at the watcher's next request for connections back.
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) async fn asked() {
    RELEASE.asked.notified().await;
}

/// Claims one unit of the budget: whether this connection is to be handed back.
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) fn claim() -> bool {
    RELEASE
        .budget
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
            left.checked_sub(1)
        })
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a connection does: wait for an ask, claim a unit, or wait for the next ask.
    async fn chosen() {
        loop {
            asked().await;
            if claim() {
                return;
            }
        }
    }

    #[tokio::test]
    async fn only_as_many_as_asked_are_chosen_and_only_after_the_ask() {
        let waiting: Vec<_> = (0..5).map(|_| tokio::spawn(chosen())).collect();
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(
            waiting.iter().all(|w| !w.is_finished()),
            "none before the ask"
        );
        release(2);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let done = waiting.iter().filter(|w| w.is_finished()).count();
        assert_eq!(done, 2);
        for w in waiting {
            w.abort();
        }
    }
}
