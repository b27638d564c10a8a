//! What callers ask of the supervisor: start, add, remove, scale, restart, stop.

use std::time::Instant;

use super::{Failure, Outcome, Phase, ReadyWaiter, Stopping, Supervisor, Ticket, Timer};
use crate::{Event, StopCause, WorkerId};

impl Supervisor {
    /// Start `count` workers; `ticket` is answered once all are ready or one failed.
    pub(crate) fn start(&mut self, ticket: Ticket, count: usize, now: Instant) {
        self.advance(now);
        if count == 0 {
            return self.complete(ticket, Outcome::Started(Err(Failure::ZeroWorkers)));
        }
        if self.running || self.stopping.is_some() {
            return self.complete(ticket, Outcome::Started(Err(Failure::AlreadyStarted)));
        }
        self.running = true;
        self.reloads.loaded.get_or_insert(now);
        self.slots.clear();
        self.arm_periodic(now);
        let ids: Vec<WorkerId> = (1..=count as u32)
            .map(|slot| self.spawn_in_slot(slot, true, now))
            .collect();
        self.ready_waiters
            .extend(ids.iter().map(|id| (*id, ReadyWaiter::Start)));
        self.starting = Some((ticket, ids));
    }

    /// One more slot; `ticket` gets its first worker once ready (or why it failed).
    pub(crate) fn add_worker(&mut self, ticket: Ticket, now: Instant) {
        self.advance(now);
        if !self.running {
            return self.complete(ticket, Outcome::Added(Err(Failure::NotRunning)));
        }
        let id = self.add_slot(now);
        self.ready_waiters.push((id, ReadyWaiter::Add(ticket)));
    }

    /// Stop the highest slot's worker (never the last slot); `ticket` gets its exit.
    pub(crate) fn remove_worker(&mut self, ticket: Ticket, now: Instant) {
        self.advance(now);
        match self.remove_slot(now) {
            Some(Some(id)) => self.exit_waiters.push((id, ticket)),
            Some(None) | None => self.complete(ticket, Outcome::Removed(None)),
        }
    }

    /// Run exactly `count` slots: new slots start (not waited for), surplus slots stop.
    pub(crate) fn scale(&mut self, ticket: Ticket, count: usize, now: Instant) {
        self.advance(now);
        if !self.running {
            return self.complete(ticket, Outcome::Scaled(Err(Failure::NotRunning)));
        }
        if count == 0 {
            return self.complete(ticket, Outcome::Scaled(Err(Failure::ZeroWorkers)));
        }
        while self.slots.wanted() < count {
            self.add_slot(now);
        }
        while self.slots.wanted() > count {
            self.remove_slot(now);
        }
        self.complete(ticket, Outcome::Scaled(Ok(())));
    }

    /// A rolling restart; requests arriving while one runs are coalesced into one more.
    pub(crate) fn restart(&mut self, ticket: Ticket, now: Instant) {
        self.advance(now);
        if !self.running {
            return self.complete(ticket, Outcome::Restarted(Err(Failure::NotRunning)));
        }
        self.rolling.request(Some(ticket));
        self.step_rolling(now);
    }

    /// Stop everything; `ticket` gets every exit once all processes are gone.
    pub(crate) fn stop(&mut self, ticket: Option<Ticket>, now: Instant) {
        self.advance(now);
        let stopping = self.stopping.get_or_insert_with(Stopping::default);
        stopping.tickets.extend(ticket);
        if self.running {
            self.running = false;
            if let Some((ticket, _)) = self.starting.take() {
                self.complete(ticket, Outcome::Started(Err(Failure::NotRunning)));
            }
            for ticket in self.rolling.cancel() {
                self.complete(ticket, Outcome::Restarted(Err(Failure::NotRunning)));
            }
            if let Some(ticket) = self.reloads.cancel() {
                self.complete(ticket, Outcome::Reloaded(Err(Failure::NotRunning)));
            }
            for (_, waiter) in std::mem::take(&mut self.ready_waiters) {
                if let ReadyWaiter::Add(ticket) = waiter {
                    self.complete(ticket, Outcome::Added(Err(Failure::NotRunning)));
                }
            }
            for (number, slot) in self.slots.iter_mut() {
                slot.wanted = false;
                slot.current = None;
                self.timers.stop(Timer::Respawn(number));
            }
            let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
            for id in ids {
                self.stop_worker(id, StopCause::Stop, now);
            }
        }
        self.finish_stop_if_done();
    }

    /// The worker asked to be stopped (`cluster_worker::shutdown`); repeats are no-ops.
    pub(crate) fn stop_requested(&mut self, id: WorkerId, now: Instant) {
        self.advance(now);
        if self.workers.get(&id).is_some_and(|w| w.stop.is_none()) {
            self.stop_worker(id, StopCause::Requested, now);
        }
    }

    pub(super) fn finish_stop_if_done(&mut self) {
        if self.stopping.is_none() || self.running {
            return;
        }
        if self.workers.is_empty() {
            self.finish_stop(false);
        } else if self.timers.get(Timer::GiveUp).is_none()
            && self.workers.values().all(|w| w.phase == Phase::Killed)
        {
            // Only killed processes remain: they get KILL_GRACE, then the stop returns.
            let latest = self
                .workers
                .keys()
                .filter_map(|id| self.timers.get(Timer::Phase(*id)))
                .max();
            if let Some(at) = latest {
                self.timers.set(Timer::GiveUp, at);
            }
        }
    }

    pub(super) fn finish_stop(&mut self, gave_up: bool) {
        let Some(stopping) = self.stopping.take() else {
            return;
        };
        self.timers.stop(Timer::GiveUp);
        let mut exits = stopping.exits;
        exits.sort_by_key(|e| (e.id.slot, e.id.generation));
        if gave_up {
            self.emit(Event::Abandoned {
                pids: self.workers.values().map(|w| w.pid).collect(),
            });
        }
        for ticket in stopping.tickets {
            self.complete(ticket, Outcome::Stopped(exits.clone()));
        }
    }
}
