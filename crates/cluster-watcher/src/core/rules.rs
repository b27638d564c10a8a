//! The rules shared by commands and inputs: slots, spawning, stopping, killing, backoff.

use std::time::{Duration, Instant};

use super::{Action, Failure, KILL_GRACE, Outcome, Phase, ReadyWaiter, Supervisor, Timer, Worker};
use crate::{Event, ExitKind, KillReason, StopCause, WorkerId};

/// How long a worker that never became ready may take to stop before it is killed.
pub(super) const NEVER_READY_GRACE: Duration = Duration::from_secs(1);

/// How a worker ended, as the backoff weighs it.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct End {
    /// How long it ran.
    pub(super) uptime: Duration,
    /// It had reported ready.
    pub(super) was_ready: bool,
    /// It had served: ready, and (for a program that reports it) accepted a connection.
    pub(super) served: bool,
    /// A signal ended it that neither it nor the watcher asked for: SIGKILL, SIGTERM,
    /// SIGINT, SIGQUIT, SIGHUP from outside (the OOM killer, an operator).
    pub(super) killed_from_outside: bool,
    /// A delay the slot must wait whatever the backoff says (memory that cannot be met).
    pub(super) hold: Duration,
}

impl End {
    /// An end at start-up: it never ran (a spawn that failed).
    pub(super) fn at_start() -> Self {
        Self::default()
    }

    /// Whether `status` is a signal sent from outside, the watcher and the worker not
    /// having asked for it.
    pub(super) fn from_outside(status: ExitKind, stopped: bool, killed: bool) -> bool {
        matches!(status, ExitKind::Signal(1 | 2 | 3 | 9 | 15)) && !stopped && !killed
    }
}

impl Supervisor {
    /// A new slot (the lowest freed one, or one more) with its first worker.
    pub(super) fn add_slot(&mut self, now: Instant) -> WorkerId {
        let slot = self.slots.claim();
        self.spawn_in_slot(slot, true, now)
    }

    /// Unwants the highest wanted slot (never the last one) and stops its workers; returns
    /// its current worker, if any (`None` when nothing was removed).
    pub(super) fn remove_slot(&mut self, now: Instant) -> Option<Option<WorkerId>> {
        if !self.running || self.slots.wanted() <= 1 {
            return None;
        }
        let number = self.slots.last_wanted()?;
        let slot = &mut self.slots[number];
        slot.wanted = false;
        let current = slot.current.take();
        self.timers.stop(Timer::Respawn(number));
        for id in self.rolling.forget_slot(number) {
            self.stop_worker(id, StopCause::ScaledDown, now);
        }
        if let Some(id) = current {
            self.stop_worker(id, StopCause::ScaledDown, now);
        }
        self.release_slot_if_gone(number);
        self.step_rolling(now);
        Some(current)
    }

    /// A new generation in `slot`; its current worker when `current`.
    pub(super) fn spawn_in_slot(&mut self, slot: u32, current: bool, now: Instant) -> WorkerId {
        let s = self.slots.ensure(slot);
        s.generation += 1;
        let id = WorkerId {
            slot,
            generation: s.generation,
        };
        if current {
            s.current = Some(id);
        }
        self.workers.insert(
            id,
            Worker {
                pid: 0,
                phase: Phase::Starting,
                started: now,
                config: self.reloads.generation,
                ready_at: None,
                event_loop: false,
                was_ready: false,
                open: None,
                open_at: None,
                ended: None,
                last_heartbeat: None,
                accepted: None,
                requests: None,
                stop: None,
                kill: None,
            },
        );
        self.touch();
        self.actions.push_back(Action::Spawn(id));
        id
    }

    pub(super) fn stop_worker(&mut self, id: WorkerId, cause: StopCause, now: Instant) {
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        if worker.stop.is_some() || worker.phase == Phase::Killed {
            return;
        }
        worker.stop = Some(cause);
        let spawned = worker.pid != 0;
        self.touch();
        if spawned {
            self.send_stop(id, now);
        }
    }

    /// The worker is asked to stop (reuseport: once its slot is drained) and given the
    /// shutdown timeout from now; one that never became ready has no clients to finish
    /// with, and gets [`NEVER_READY_GRACE`] at most, so a stop is prompt whatever state
    /// workers are in.
    pub(super) fn send_stop(&mut self, id: WorkerId, now: Instant) {
        if let Some(worker) = self.workers.get_mut(&id) {
            worker.phase = Phase::Stopping;
            let grace = match worker.was_ready {
                true => self.config.shutdown_timeout,
                false => self.config.shutdown_timeout.min(NEVER_READY_GRACE),
            };
            self.timers.set(Timer::Phase(id), now + grace);
        }
        if !self.drain_first(id, now) {
            self.push_stop(id);
        }
    }

    /// Asks the driver to stop `id`, its goodbyes spread unless the cluster stops.
    pub(super) fn push_stop(&mut self, id: WorkerId) {
        let (pid, cause) = self.workers.get(&id).map_or((0, None), |w| (w.pid, w.stop));
        // The cluster's own stop is not spread: nobody will take the clients over.
        let spread = cause.is_some_and(|c| c != StopCause::Stop);
        self.actions.push_back(Action::Stop { id, spread });
        if let (Some(cause), true) = (cause, pid != 0) {
            self.emit(Event::Stopping { id, pid, cause });
        }
    }

    /// `SIGKILL` to the worker's process group, for `reason`; it gets [`KILL_GRACE`] to be
    /// reaped.
    pub(super) fn kill(&mut self, id: WorkerId, reason: KillReason, now: Instant) {
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        if worker.phase == Phase::Killed || worker.pid == 0 {
            return;
        }
        worker.phase = Phase::Killed;
        worker.kill.get_or_insert(reason);
        let pid = worker.pid;
        self.timers.set(Timer::Phase(id), now + KILL_GRACE);
        self.touch();
        self.actions.push_back(Action::Kill { id, pid });
        self.emit(Event::Killed { id, pid, reason });
    }

    /// When the slot of a worker that ended gets its next one (see the crate's supervision
    /// rules): at once after a healthy end (it ran at least `min_uptime`, or it had served
    /// and something outside killed it: the OOM killer, an operator, a chaos test), which
    /// clears the slot's record; otherwise after a backoff that starts at 0 and doubles with
    /// each such end in a row, from `backoff_initial` up to `backoff_max`. Never while the
    /// cluster has no ready worker and this slot's worker had been ready and was killed from
    /// outside: a slot that can serve is not held back to leave nothing serving.
    pub(super) fn respawn_after_exit(&mut self, id: WorkerId, end: End, now: Instant) {
        let config = &self.config;
        let healthy = end.uptime >= config.min_uptime || (end.served && end.killed_from_outside);
        let slot = &mut self.slots[id.slot];
        let mut delay = if healthy {
            slot.backoff = Duration::ZERO;
            Duration::ZERO
        } else {
            let delay = slot.backoff;
            slot.backoff = (delay * 2).clamp(config.backoff_initial, config.backoff_max);
            delay
        };
        if !delay.is_zero() && end.was_ready && end.killed_from_outside && self.ready_count() == 0 {
            delay = Duration::ZERO;
        }
        self.schedule_respawn(id, delay.max(end.hold), now);
    }

    /// Workers that are ready, of any generation.
    pub(super) fn ready_count(&self) -> usize {
        self.workers
            .values()
            .filter(|w| w.phase == Phase::Ready)
            .count()
    }

    pub(super) fn schedule_respawn(&mut self, id: WorkerId, delay: Duration, now: Instant) {
        if !self.running || !self.slots[id.slot].wanted {
            return;
        }
        let next = WorkerId {
            slot: id.slot,
            generation: self.slots[id.slot].generation + 1,
        };
        self.emit(Event::Respawning { id: next, delay });
        if delay.is_zero() {
            self.spawn_in_slot(id.slot, true, now);
        } else {
            self.timers.set(Timer::Respawn(id.slot), now + delay);
        }
    }

    pub(super) fn take_ready_waiters(&mut self, id: WorkerId) -> Vec<ReadyWaiter> {
        let waiters = self
            .ready_waiters
            .iter()
            .filter(|(w, _)| *w == id)
            .map(|(_, waiter)| *waiter)
            .collect();
        self.ready_waiters.retain(|(w, _)| *w != id);
        waiters
    }

    pub(super) fn fail_ready_waiters(&mut self, id: WorkerId, failure: &Failure) {
        for waiter in self.take_ready_waiters(id) {
            match waiter {
                ReadyWaiter::Start => {
                    if let Some((ticket, _)) = self.starting.take() {
                        self.complete(ticket, Outcome::Started(Err(failure.clone())));
                    }
                }
                ReadyWaiter::Add(ticket) => {
                    self.complete(ticket, Outcome::Added(Err(failure.clone())))
                }
            }
        }
    }

    pub(super) fn initial_ready(&mut self, id: WorkerId) {
        let Some((ticket, pending)) = &mut self.starting else {
            return;
        };
        pending.retain(|w| *w != id);
        if pending.is_empty() {
            let ticket = *ticket;
            self.starting = None;
            self.complete(ticket, Outcome::Started(Ok(())));
        }
    }
}
