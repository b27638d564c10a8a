//! What a worker's control messages become for the driver: each once it means something
//! new; heartbeats and counts coalesced, so that a worker has at most one of each kind
//! waiting in the driver's queue however fast it sends.
//!
//! Coalescing, not a rate: the reader keeps no clock (every timer is the core's). A count
//! that arrives while one of its kind still waits replaces the waiting value, which the
//! driver reads when it gets to the input ([`Latest::take`]), so the newest value is never
//! lost, only the ones in between.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use cluster_ipc::protocol::WorkerToWatcher;

use crate::{ExitKind, WorkerId};

/// What the per-worker tasks tell the driver.
#[derive(Debug)]
pub(crate) enum Input {
    Ready(WorkerId),
    /// A heartbeat came (coalesced: see `forwarding`).
    Heartbeat(WorkerId, Arc<Latest>),
    StopRequested(WorkerId),
    BadTraffic(WorkerId),
    ControlClosed(WorkerId),
    /// Connections the worker accepted so far (the newest count: [`Latest::take`]).
    Accepted(WorkerId, Arc<Latest>),
    /// Connections open in the worker now (the newest count).
    Open(WorkerId, Arc<Latest>),
    /// HTTP requests the worker answered so far (the newest count).
    Requests(WorkerId, Arc<Latest>),
    /// The process ended: it serves no more.
    MainExited(WorkerId),
    /// The process ended and everything it sent was read.
    Exited(WorkerId, ExitKind),
    /// Program mode: an sd_notify datagram on the worker's socket.
    Notify(WorkerId, crate::notify::Notification),
}

/// The newest value of one kind of message from one worker, and whether an input for it
/// waits in the driver's queue.
#[derive(Debug, Default)]
pub(crate) struct Latest {
    queued: AtomicBool,
    value: AtomicU64,
}

impl Latest {
    /// Records `value`; true when an input must be queued for it (none waits yet).
    fn offer(&self, value: u64) -> bool {
        self.value.store(value, Ordering::SeqCst);
        !self.queued.swap(true, Ordering::SeqCst)
    }

    /// The newest value, for the input the driver handles now; the next message of this
    /// kind queues a new input.
    pub(crate) fn take(&self) -> u64 {
        self.queued.store(false, Ordering::SeqCst);
        self.value.load(Ordering::SeqCst)
    }
}

/// What a worker's control messages become for the driver (see the module docs).
pub(super) struct Forwarding {
    id: WorkerId,
    heartbeat: Arc<Latest>,
    accepted: Arc<Latest>,
    open: Arc<Latest>,
    requests: Arc<Latest>,
    ready: bool,
    shutdown: bool,
}

impl Forwarding {
    pub(super) fn new(id: WorkerId) -> Self {
        Self {
            id,
            heartbeat: Arc::default(),
            accepted: Arc::default(),
            open: Arc::default(),
            requests: Arc::default(),
            ready: false,
            shutdown: false,
        }
    }

    /// The input for `message`, if one is to be queued.
    pub(super) fn input(&mut self, message: WorkerToWatcher) -> Option<Input> {
        let id = self.id;
        match message {
            WorkerToWatcher::Heartbeat => self
                .heartbeat
                .offer(0)
                .then(|| Input::Heartbeat(id, self.heartbeat.clone())),
            WorkerToWatcher::Accepted(total) => self
                .accepted
                .offer(total)
                .then(|| Input::Accepted(id, self.accepted.clone())),
            WorkerToWatcher::Open(open) => self
                .open
                .offer(open)
                .then(|| Input::Open(id, self.open.clone())),
            WorkerToWatcher::Requests(total) => self
                .requests
                .offer(total)
                .then(|| Input::Requests(id, self.requests.clone())),
            WorkerToWatcher::Ready => {
                (!std::mem::replace(&mut self.ready, true)).then_some(Input::Ready(id))
            }
            WorkerToWatcher::Shutdown => {
                (!std::mem::replace(&mut self.shutdown, true)).then_some(Input::StopRequested(id))
            }
            // Handled by the reader itself.
            WorkerToWatcher::Closed(_)
            | WorkerToWatcher::Message(_)
            | WorkerToWatcher::Metrics(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> WorkerId {
        WorkerId {
            slot: 1,
            generation: 1,
        }
    }

    #[test]
    fn a_flood_queues_one_input_a_kind_and_the_driver_reads_the_newest_value() {
        let mut forwarding = Forwarding::new(id());
        let first = forwarding.input(WorkerToWatcher::Accepted(1));
        let Some(Input::Accepted(_, latest)) = first else {
            panic!("the first count is queued");
        };
        for total in 2..=1000 {
            assert!(forwarding.input(WorkerToWatcher::Accepted(total)).is_none());
            assert!(
                forwarding
                    .input(WorkerToWatcher::Heartbeat)
                    .is_none_or(|_| total == 2)
            );
        }
        assert_eq!(latest.take(), 1000, "the newest value, not the first");
        assert!(
            forwarding.input(WorkerToWatcher::Accepted(1001)).is_some(),
            "once read, the next one is queued"
        );
    }
}
