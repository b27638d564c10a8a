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
        true
    });
}

/// When the drain began and its plan, once it has.
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) fn started() -> Option<(Instant, Plan)> {
    DRAIN.started.borrow().map(|s| (s.at, s.plan))
}

/// Resolves when the drain begins (everyone's, not at a turn).
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) async fn begun() {
    let mut started = DRAIN.started.subscribe();
    // The sender lives in a static: this cannot fail.
    let _ = started.wait_for(Option::is_some).await;
}

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

/// When what is left is cut, from the start of the drain: a little before the watcher's
/// own deadline, so the worker ends it itself rather than being killed.
pub(crate) fn cut_after(timeout: Duration) -> Duration {
    timeout.saturating_sub((timeout / 10).min(Duration::from_millis(500)))
}
