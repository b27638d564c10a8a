//! The rules shared by commands and inputs: slots, spawning, stopping, killing, backoff.

use std::time::{Duration, Instant};

use super::{Action, Failure, KILL_GRACE, Outcome, Phase, ReadyWaiter, Supervisor, Timer, Worker};
use crate::{Event, KillReason, StopCause, WorkerId};

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
                last_heartbeat: None,
                accepted: None,
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
    /// shutdown timeout from now.
    pub(super) fn send_stop(&mut self, id: WorkerId, now: Instant) {
        if let Some(worker) = self.workers.get_mut(&id) {
            worker.phase = Phase::Stopping;
            self.timers
                .set(Timer::Phase(id), now + self.config.shutdown_timeout);
        }
        if !self.drain_first(id, now) {
            self.actions.push_back(Action::Stop(id));
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

    /// Backoff: a worker that ended within `min_uptime` of starting, for whatever reason
    /// (a crash, a signal from outside, a kill by this watcher, its own request) unless the
    /// watcher stopped it as part of a stop, restart or scale-down, counts toward the slot's
    /// backoff. The first such end is replaced at once, each further one in a row waits
    /// twice as long as the last, up to `backoff_max`. A worker that ran longer is replaced
    /// at once and clears the record.
    pub(super) fn respawn_after_exit(&mut self, id: WorkerId, uptime: Duration, now: Instant) {
        let config = &self.config;
        let slot = &mut self.slots[id.slot];
        let delay = if uptime >= config.min_uptime {
            slot.backoff = Duration::ZERO;
            Duration::ZERO
        } else {
            let delay = slot.backoff;
            slot.backoff = (delay * 2).clamp(config.backoff_initial, config.backoff_max);
            delay
        };
        self.schedule_respawn(id, delay, now);
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
