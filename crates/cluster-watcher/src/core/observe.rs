//! Readiness observed, not guessed, for programs given listeners: while such a worker
//! starts, the driver looks at it every [`OBSERVE_EVERY`] ([`Action::Observe`]) and reports
//! what it saw ([`Supervisor::observed`]): waiting on one of the cluster's listening sockets
//! (the socket in one of its epoll sets, or a thread blocked in `accept`) makes it ready at
//! once. `ready_after` stays the fallback, for programs that cannot be seen waiting (those
//! that `poll` or `select`), and says when it was used; but a worker seen running an event
//! loop (an epoll set) that does not watch the listener yet is still starting (a slow
//! start-up: a web framework loading its application), so the fallback waits for it, up to
//! the ready timeout.

use std::time::{Duration, Instant};

use super::{Action, Phase, Supervisor, Timer};
use crate::{Event, WorkerId};

/// How often a starting program is looked at.
pub(crate) const OBSERVE_EVERY: Duration = Duration::from_millis(200);

/// What the driver saw of a starting program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Observation {
    /// Waiting on one of the cluster's listening sockets.
    Listening,
    /// Running an event loop whose epoll set does not hold the listener (yet).
    EventLoop,
    /// Nothing telling.
    Unknown,
}

impl Supervisor {
    /// A program given listeners was spawned: it is looked at while it starts.
    pub(super) fn watch_start(&mut self, id: WorkerId, now: Instant) {
        if self.config.program_mode() {
            self.timers.set(Timer::Observe(id), now + OBSERVE_EVERY);
        }
    }

    /// Time to look at `id` again, while it starts.
    pub(super) fn observe_due(&mut self, id: WorkerId, now: Instant) {
        let Some(worker) = self.workers.get(&id) else {
            return;
        };
        if worker.phase != Phase::Starting || worker.pid == 0 {
            return;
        }
        let pid = worker.pid;
        self.actions.push_back(Action::Observe { id, pid });
        self.timers.set(Timer::Observe(id), now + OBSERVE_EVERY);
    }

    /// What the driver saw of `id`.
    pub(crate) fn observed(&mut self, id: WorkerId, observation: Observation, now: Instant) {
        self.advance(now);
        // A stopped program still holding its slot back (reuseport's release).
        if self.release_observed(id, observation == Observation::Listening) {
            return;
        }
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        match observation {
            Observation::Listening => {
                if worker.phase == Phase::Starting {
                    self.ready(id, now);
                }
            }
            Observation::EventLoop => worker.event_loop = true,
            Observation::Unknown => {}
        }
    }

    /// `ready_after` passed: ready, unless it is seen starting an event loop (it is then
    /// waited for, up to the ready timeout).
    pub(super) fn ready_after_due(&mut self, id: WorkerId, now: Instant) {
        let Some(worker) = self.workers.get(&id) else {
            return;
        };
        if worker.phase != Phase::Starting || worker.event_loop {
            return;
        }
        let after = now.saturating_duration_since(worker.started);
        self.emit(Event::ReadyByTimer { id, after });
        self.ready(id, now);
    }
}
