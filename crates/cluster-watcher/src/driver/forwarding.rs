//! What a worker's control messages become for the driver: each once it means something
//! new, a flood of heartbeats or counts at most two per heartbeat interval.

use std::time::{Duration, Instant};

use cluster_ipc::protocol::WorkerToWatcher;

use super::process::Input;
use crate::WorkerId;

/// What a worker's control messages become for the driver: each once it means something
/// new; a flood of heartbeats or counts is read and reaches the driver as at most two per
/// heartbeat interval.
pub(super) struct Forwarding {
    id: WorkerId,
    every: Duration,
    last_heartbeat: Option<Instant>,
    last_accepted: Option<Instant>,
    last_open: Option<Instant>,
    ready: bool,
    shutdown: bool,
}

impl Forwarding {
    pub(super) fn new(id: WorkerId, heartbeat_interval: Duration) -> Self {
        Self {
            id,
            every: heartbeat_interval / 2,
            last_heartbeat: None,
            last_accepted: None,
            last_open: None,
            ready: false,
            shutdown: false,
        }
    }

    /// The input for `message` received at `now`, if it is to be forwarded.
    pub(super) fn input(&mut self, message: WorkerToWatcher, now: Instant) -> Option<Input> {
        let every = self.every;
        let due = |last: &mut Option<Instant>| {
            let due = last.is_none_or(|t| now.duration_since(t) >= every);
            if due {
                *last = Some(now);
            }
            due
        };
        match message {
            WorkerToWatcher::Heartbeat => {
                due(&mut self.last_heartbeat).then_some(Input::Heartbeat(self.id))
            }
            WorkerToWatcher::Accepted(total) => {
                due(&mut self.last_accepted).then_some(Input::Accepted(self.id, total))
            }
            WorkerToWatcher::Open(open) => {
                due(&mut self.last_open).then_some(Input::Open(self.id, open))
            }
            WorkerToWatcher::Ready => {
                (!std::mem::replace(&mut self.ready, true)).then_some(Input::Ready(self.id))
            }
            WorkerToWatcher::Shutdown => (!std::mem::replace(&mut self.shutdown, true))
                .then_some(Input::StopRequested(self.id)),
            // Handled by the reader itself.
            WorkerToWatcher::Closed(_)
            | WorkerToWatcher::Message(_)
            | WorkerToWatcher::Metrics(_) => None,
        }
    }
}
