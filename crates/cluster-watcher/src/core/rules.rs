//! The rules shared by commands and inputs: slots, spawning, stopping, killing, backoff.

use std::time::{Duration, Instant};

use super::{Action, Failure, Outcome, Phase, ReadyWaiter, Slot, Supervisor, Worker};
use crate::{Event, KillReason, StopCause, WorkerId};

impl Supervisor {
    pub(super) fn wanted_slots(&self) -> usize {
        self.slots.iter().filter(|s| s.wanted).count()
    }

    pub(super) fn add_slot(&mut self, now: Instant) -> WorkerId {
        let slot = match self.slots.iter().position(|s| !s.wanted) {
            Some(index) => {
                self.slots[index] = Slot {
                    generation: self.slots[index].generation,
                    ..Slot::default()
                };
                index as u32 + 1
            }
            None => {
                self.slots.push(Slot::default());
                self.slots.len() as u32
            }
        };
        self.slots[slot as usize - 1].wanted = true;
        self.spawn_in_slot(slot, true, now)
    }

    /// Unwants the highest wanted slot (never the last one) and stops its workers; returns
    /// its current worker, if any (`None` when nothing was removed).
    pub(super) fn remove_slot(&mut self, now: Instant) -> Option<Option<WorkerId>> {
        if !self.running || self.wanted_slots() <= 1 {
            return None;
        }
        let index = self.slots.iter().rposition(|s| s.wanted)?;
        let slot = &mut self.slots[index];
        slot.wanted = false;
        slot.respawn_at = None;
        let current = slot.current.take();
        let number = index as u32 + 1;
        for id in self.rolling.forget_slot(number) {
            self.stop_worker(id, StopCause::ScaledDown, now);
        }
        if let Some(id) = current {
            self.stop_worker(id, StopCause::ScaledDown, now);
        }
        self.step_rolling(now);
        Some(current)
    }

    /// A new generation in `slot`; its current worker when `current`.
    pub(super) fn spawn_in_slot(&mut self, slot: u32, current: bool, now: Instant) -> WorkerId {
        let s = &mut self.slots.resize_with_get(slot);
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
                deadline: None,
                last_heartbeat: None,
                ready_at: None,
                accepted: None,
                stop: None,
                kill: None,
            },
        );
        self.changed = true;
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
        self.changed = true;
        if worker.pid != 0 {
            self.actions.push_back(Action::Stop(id));
            self.set_stopping_deadline(id, now);
        }
    }

    pub(super) fn set_stopping_deadline(&mut self, id: WorkerId, now: Instant) {
        let timeout = self.config.shutdown_timeout;
        if let Some(worker) = self.workers.get_mut(&id) {
            worker.phase = Phase::Stopping;
            worker.deadline = Some(now + timeout);
        }
    }

    pub(super) fn kill(&mut self, id: WorkerId, reason: KillReason) {
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        if worker.phase == Phase::Killed || worker.pid == 0 {
            return;
        }
        worker.phase = Phase::Killed;
        worker.kill.get_or_insert(reason);
        let pid = worker.pid;
        self.changed = true;
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
        let slot = &mut self.slots[id.slot as usize - 1];
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
        if !self.running || !self.slots[id.slot as usize - 1].wanted {
            return;
        }
        let next = WorkerId {
            slot: id.slot,
            generation: self.slots[id.slot as usize - 1].generation + 1,
        };
        self.emit(Event::Respawning { id: next, delay });
        if delay.is_zero() {
            self.spawn_in_slot(id.slot, true, now);
        } else {
            self.slots[id.slot as usize - 1].respawn_at = Some(now + delay);
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

/// `Vec::get_mut` that grows the vector to hold slot `slot` (1-based).
trait ResizeWithGet {
    fn resize_with_get(&mut self, slot: u32) -> &mut Slot;
}

impl ResizeWithGet for Vec<Slot> {
    fn resize_with_get(&mut self, slot: u32) -> &mut Slot {
        let index = slot as usize - 1;
        if self.len() <= index {
            self.resize_with(index + 1, || Slot {
                wanted: true,
                ..Slot::default()
            });
        }
        &mut self[index]
    }
}
