//! Draining: the moment this worker starts saying goodbye to its long-lived connections,
//! and each connection's turn to be told.
//!
//! A stop from the watcher (a restart, a scale-down, a recycling; or a signal) begins the
//! drain with a plan: a **spread**, the window the goodbyes are spread over so that clients
//! do not all reconnect in the same instant, and a **timeout**, the hard cap after which
//! what is left is cut. Each long-lived connection (a WebSocket, an event stream, an HTTP/2
//! connection) waits in [`drained`]; when the drain begins, the waiters take turns evenly
//! spaced over the spread (the k-th of n is told at `k × spread / n`).

use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// How long a drain lasts at most when nobody said (a signal, standalone).
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How a drain goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The window the goodbyes are spread over.
    pub(crate) spread: Duration,
    /// When what is left is cut, counted from the start of the drain.
    pub(crate) timeout: Duration,
}

/// A drain under way.
#[derive(Debug, Clone, Copy)]
struct Started {
    at: Instant,
    plan: Plan,
    /// How many were waiting for their turn when it began.
    waiting: usize,
}

#[derive(Debug)]
struct Drain {
    started: watch::Sender<Option<Started>>,
    /// Waiters registered now (each [`drained`] future from creation to drop).
    waiting: AtomicUsize,
    /// Turns handed out since the drain began.
    turns: AtomicUsize,
}

static DRAIN: LazyLock<Drain> = LazyLock::new(|| Drain {
    started: watch::channel(None).0,
    waiting: AtomicUsize::new(0),
    turns: AtomicUsize::new(0),
});

/// Begins the drain (the first call wins; later ones change nothing).
pub(crate) fn begin(plan: Plan) {
    let drain = &*DRAIN;
    drain.started.send_if_modified(|started| {
        if started.is_some() {
            return false;
        }
        *started = Some(Started {
            at: Instant::now(),
            plan,
            waiting: drain.waiting.load(Ordering::SeqCst),
        });
        BEGUN.store(true, Ordering::Release);
        true
    });
}

/// When the drain began and its plan, once it has.
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) fn started() -> Option<(Instant, Plan)> {
    DRAIN.started.borrow().map(|s| (s.at, s.plan))
}

/// Whether the drain began: one atomic load.
#[cfg(feature = "http")]
pub(crate) fn has_begun() -> bool {
    BEGUN.load(Ordering::Acquire)
}

/// Set as the drain begins, before anyone is woken.
static BEGUN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What a connection is told at its turn of the drain.
#[derive(Debug, Clone, Copy)]
pub struct DrainNotice {
    deadline: Instant,
}

impl DrainNotice {
    /// When whatever is left of the connection is cut (the drain's hard cap): a goodbye in
    /// the application's own protocol should be done by then.
    pub fn deadline(&self) -> std::time::Instant {
        self.deadline.into_std()
    }

    /// The time left until [`deadline`](Self::deadline).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// Counts a waiter from its creation to its drop.
struct Waiting;

impl Waiting {
    fn new() -> Self {
        DRAIN.waiting.fetch_add(1, Ordering::SeqCst);
        Self
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        DRAIN.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Resolves at this caller's turn of the worker's drain: when the watcher asked the worker
/// to stop (or a stop signal came, for the serve loops), at a moment of its own within the
/// drain's spread, so that the clients of a worker are told to go a few at a time. A
/// long-lived connection of the application's (a WebSocket, a stream in a protocol of its
/// own) selects on this to say goodbye in its own words; the serve loops and
/// [`ws`](crate::ws) do it for HTTP/2, event streams and WebSockets.
///
/// Created after the drain began, it resolves at once.
pub async fn drained() -> DrainNotice {
    let waiting = Waiting::new();
    let mut started = DRAIN.started.subscribe();
    let begun = loop {
        if let Some(started) = *started.borrow_and_update() {
            break started;
        }
        if started.changed().await.is_err() {
            return std::future::pending().await;
        }
    };
    let turn = DRAIN.turns.fetch_add(1, Ordering::SeqCst);
    drop(waiting);
    let share = if begun.waiting == 0 || turn >= begun.waiting {
        Duration::ZERO
    } else {
        begun
            .plan
            .spread
            .mul_f64(turn as f64 / begun.waiting as f64)
    };
    tokio::time::sleep_until(begun.at + share).await;
    DrainNotice {
        deadline: begun.at + cut_after(begun.plan.timeout),
    }
}

/// Completes when the drain begins (at once if it has), with the moment what is left is
/// cut: for what leaves at the start of the drain rather than at a turn (a session that
/// moves to the next generation need not wait: its client sees nothing).
#[cfg(feature = "ws")]
pub(crate) async fn begun() -> Instant {
    let mut started = DRAIN.started.subscribe();
    loop {
        if let Some(started) = *started.borrow_and_update() {
            return started.at + cut_after(started.plan.timeout);
        }
        if started.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// When what is left is cut, from the start of the drain: a little before the watcher's
/// own deadline, so the worker ends it itself rather than being killed.
pub(crate) fn cut_after(timeout: Duration) -> Duration {
    timeout.saturating_sub((timeout / 10).min(Duration::from_millis(500)))
}

#[cfg(feature = "http")]
pub(crate) use self::cheap::{Turn, turn};

#[cfg(feature = "http")]
mod cheap {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    use super::{DrainNotice, drained, has_begun};

    /// [`drained`] as a future that costs one atomic load per poll until the drain begins: a
    /// busy connection is polled for every frame or message, and a watch's future takes a lock.
    /// The inner future is polled once to take its place among the waiters (and to be woken
    /// when the drain begins), again whenever the task polling it changes, and at every poll
    /// once the drain began.
    pub(crate) struct Turn {
        inner: Pin<Box<dyn Future<Output = DrainNotice> + Send>>,
        waker: Option<Waker>,
    }

    impl std::fmt::Debug for Turn {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Turn").finish_non_exhaustive()
        }
    }

    /// This caller's turn of the drain, cheaply polled (see [`Turn`]).
    pub(crate) fn turn() -> Turn {
        Turn {
            inner: Box::pin(drained()),
            waker: None,
        }
    }

    impl Future for Turn {
        type Output = DrainNotice;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<DrainNotice> {
            let registered = self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
            if registered && !has_begun() {
                return Poll::Pending;
            }
            self.waker = Some(cx.waker().clone());
            self.inner.as_mut().poll(cx)
        }
    }
}
