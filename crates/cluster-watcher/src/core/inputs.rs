//! What the driver reports: a process spawned or not, ready, heartbeats, exits.

use std::time::{Duration, Instant};

use super::rules::End;
use super::{Action, Failure, Outcome, Phase, ReadyWaiter, Supervisor, Ticket, Timer, Worker};
use crate::{Event, ExitKind, KillReason, StopCause, WorkerExit, WorkerId};

impl Supervisor {
    /// The process for `id` runs as `pid`.
    pub(crate) fn spawned(&mut self, id: WorkerId, pid: u32, now: Instant) {
        self.advance(now);
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        worker.pid = pid;
        worker.started = now;
        let stop = worker.stop;
        self.timers
            .set(Timer::Phase(id), now + self.config.ready_timeout);
        if self.config.program_mode()
            && let Some(after) = self.config.ready_after
        {
            self.timers.set(Timer::ReadyAfter(id), now + after);
        }
        self.watch_start(id, now);
        self.touch();
        self.emit(Event::Started { id, pid });
        // Stopped while it was being spawned: tell it now that it can be told.
        if stop.is_some() {
            self.send_stop(id, now);
        }
    }

    /// Starting the process for `id` failed: like an exit at once, with the error.
    pub(crate) fn spawn_failed(
        &mut self,
        id: WorkerId,
        os_error: Option<i32>,
        message: String,
        now: Instant,
    ) {
        self.advance(now);
        self.emit(Event::SpawnFailed {
            id,
            error: message.clone(),
        });
        let failure = Failure::Spawn { os_error, message };
        let worker = self.workers.get(&id).copied();
        self.reload_watch_end(id, worker, failure.clone(), now);
        self.fail_ready_waiters(id, &failure);
        self.recycling_failed(id);
        self.rolling_failed(id, failure, now);
        if self.workers.remove(&id).is_some() {
            self.touch();
        }
        self.timers.forget_worker(id);
        let slot = &mut self.slots[id.slot];
        if slot.current == Some(id) {
            slot.current = None;
            slot.restarts.crashed += 1;
            // Counts as an end at start-up: a missing binary must not respawn hot.
            self.respawn_after_exit(id, End::at_start(), now);
        }
        self.finish_stop_if_done();
    }

    /// The worker reported ready.
    pub(crate) fn ready(&mut self, id: WorkerId, now: Instant) {
        self.advance(now);
        let heartbeat_timeout = self.config.heartbeat_timeout;
        let program_mode = self.config.program_mode();
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        if worker.phase != Phase::Starting {
            return;
        }
        // A program that never sends WATCHDOG=1 is not held to a heartbeat; one that sends
        // it once is held to it from then on.
        let expects_heartbeats = !program_mode || worker.last_heartbeat.is_some();
        worker.phase = Phase::Ready;
        worker.was_ready = true;
        worker.ready_at = Some(now);
        worker.last_heartbeat = Some(now);
        let (pid, started) = (worker.pid, worker.started);
        self.timers.stop(Timer::ReadyAfter(id));
        self.timers.stop(Timer::Observe(id));
        match expects_heartbeats {
            true => self.timers.set(Timer::Phase(id), now + heartbeat_timeout),
            false => self.timers.stop(Timer::Phase(id)),
        }
        self.arm_max_age(id, started);
        self.touch();
        self.emit(Event::Ready { id, pid });
        self.actions.push_back(Action::Admit(id));
        if !self.config.slow_start.is_zero() {
            self.slow_start_due(now);
        }
        let replacing = self.rolling.is_replacement(id);
        let mut initial = false;
        for waiter in self.take_ready_waiters(id) {
            match waiter {
                ReadyWaiter::Start => {
                    initial = true;
                    self.initial_ready(id);
                }
                ReadyWaiter::Add(ticket) => self.complete(ticket, Outcome::Added(Ok(id))),
            }
        }
        if replacing {
            self.replacement_ready(id, now);
        } else if !self.recycled_ready(id, now) && !initial {
            // A scale-up or a respawn: it gets a share of the long-lived connections too.
            self.rebalance_for_newcomer(now);
        }
        self.reload_progress(now);
    }

    /// Connections open in the worker now, as it reported.
    pub(crate) fn open(&mut self, id: WorkerId, open: u64, now: Instant) {
        self.advance(now);
        if let Some(worker) = self.workers.get_mut(&id) {
            worker.open = Some(open);
            worker.open_at = Some(now);
        }
    }

    /// HTTP requests the worker answered so far: shown, never a decision.
    pub(crate) fn requests(&mut self, id: WorkerId, total: u64) {
        if let Some(worker) = self.workers.get_mut(&id) {
            worker.requests = Some(total);
        }
    }

    /// A heartbeat from the worker.
    pub(crate) fn heartbeat(&mut self, id: WorkerId, now: Instant) {
        self.advance(now);
        let timeout = self.config.heartbeat_timeout;
        if let Some(worker) = self.workers.get_mut(&id) {
            worker.last_heartbeat = Some(now);
            if worker.phase == Phase::Ready {
                self.timers.set(Timer::Phase(id), now + timeout);
            }
        }
    }

    /// The worker broke the protocol on its control socket: it is killed.
    pub(crate) fn bad_traffic(&mut self, id: WorkerId, now: Instant) {
        self.advance(now);
        self.kill(id, KillReason::BadTraffic, now);
    }

    /// The worker closed its control socket: it is exiting, and gets the shutdown timeout
    /// to finish doing so.
    pub(crate) fn control_closed(&mut self, id: WorkerId, now: Instant) {
        self.advance(now);
        let limit = now + self.config.shutdown_timeout;
        if let Some(worker) = self.workers.get_mut(&id)
            && worker.phase != Phase::Killed
        {
            worker.phase = Phase::Stopping;
            let deadline = self
                .timers
                .get(Timer::Phase(id))
                .map_or(limit, |d| d.min(limit));
            self.timers.set(Timer::Phase(id), deadline);
            self.touch();
        }
    }

    /// The worker's main process ended (what it sent is still being read): it serves no
    /// more, and its uptime ends now.
    pub(crate) fn main_exited(&mut self, id: WorkerId, now: Instant) {
        self.advance(now);
        let grace = self.config.shutdown_timeout;
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        worker.ended = Some(now);
        if matches!(worker.phase, Phase::Starting | Phase::Ready) {
            worker.phase = Phase::Stopping;
            self.timers.stop(Timer::ReadyAfter(id));
            self.timers.stop(Timer::Observe(id));
            self.timers.set(Timer::Phase(id), now + grace);
            self.touch();
        }
    }

    /// The process ended (and everything it sent was read).
    pub(crate) fn exited(&mut self, id: WorkerId, status: ExitKind, now: Instant) {
        self.advance(now);
        let Some(worker) = self.workers.remove(&id) else {
            return;
        };
        self.timers.forget_worker(id);
        self.touch();
        let exit = WorkerExit {
            id,
            pid: worker.pid,
            status,
            stopped: worker.stop,
            killed: worker.kill,
        };
        self.emit(Event::Exited(exit));
        if let Some(stopping) = &mut self.stopping {
            stopping.exits.push(exit);
        }
        let failure = match worker.kill {
            Some(KillReason::ReadyTimeout) => Failure::NotReady {
                id,
                pid: worker.pid,
                timeout: self.config.ready_timeout,
            },
            _ => Failure::ExitedBeforeReady {
                id,
                pid: worker.pid,
                status,
            },
        };
        // A configuration on probation that fails is rolled back before the slot respawns.
        self.reload_watch_end(id, Some(worker), failure.clone(), now);
        // Waiters for its readiness are still registered only if it never became ready.
        self.fail_ready_waiters(id, &failure);
        self.recycling_failed(id);
        self.rolling_failed(id, failure, now);
        self.answer_exit_waiters(id, exit);
        let slot = &mut self.slots[id.slot];
        slot.last_exit = Some(exit);
        if slot.current == Some(id) {
            slot.current = None;
            match (worker.stop, worker.kill) {
                (Some(StopCause::Requested), _) => slot.restarts.requested += 1,
                (_, Some(KillReason::HeartbeatTimeout | KillReason::ReadyTimeout)) => {
                    slot.restarts.hung += 1
                }
                _ => slot.restarts.crashed += 1,
            }
            if self.running && slot.wanted && !self.replacing(id.slot) {
                let end = self.end_of(id, &worker, status, now);
                self.slots[id.slot].could_serve = end.was_ready && end.killed_from_outside;
                self.respawn_after_exit(id, end, now);
            }
        }
        self.reuseport_exited(id);
        self.keep_capacity(now);
        // A slot that waited for this one to drain may be replaced now.
        self.step_rolling(now);
        self.reload_progress(now);
        self.finish_stop_if_done();
    }

    /// How `worker` ended, as the backoff weighs it.
    fn end_of(&self, id: WorkerId, worker: &Worker, status: ExitKind, now: Instant) -> End {
        let served = worker.was_ready
            && (self.config.program_mode() || worker.accepted.is_some_and(|n| n > 0));
        let hold = match worker.kill {
            Some(KillReason::MemoryCeiling) => self.memory_hold(id.slot, now),
            _ => Duration::ZERO,
        };
        End {
            uptime: worker
                .ended
                .unwrap_or(now)
                .saturating_duration_since(worker.started),
            was_ready: worker.was_ready,
            served,
            killed_from_outside: End::from_outside(
                status,
                worker.stop.is_some(),
                worker.kill.is_some(),
            ),
            hold,
        }
    }

    /// Never nothing ready while a slot could serve: when no worker is ready, every slot
    /// backing off whose last worker had been ready and was killed from outside starts now.
    fn keep_capacity(&mut self, now: Instant) {
        if !self.running || self.ready_count() > 0 {
            return;
        }
        let waiting: Vec<u32> = self
            .slots
            .iter()
            .filter(|(number, slot)| {
                slot.wanted
                    && slot.could_serve
                    && self.timers.get(Timer::Respawn(*number)).is_some()
            })
            .map(|(number, _)| number)
            .collect();
        for slot in waiting {
            self.timers.stop(Timer::Respawn(slot));
            self.spawn_in_slot(slot, true, now);
        }
    }

    fn answer_exit_waiters(&mut self, id: WorkerId, exit: WorkerExit) {
        let waiting: Vec<Ticket> = self
            .exit_waiters
            .iter()
            .filter(|(w, _)| *w == id)
            .map(|(_, t)| *t)
            .collect();
        self.exit_waiters.retain(|(w, _)| *w != id);
        for ticket in waiting {
            self.complete(ticket, Outcome::Removed(Some(exit)));
        }
    }

    /// Shared sockets: one had stopped listening (a worker shut its copy) and was bound
    /// anew; the workers are restarted onto it (nobody waits on that restart).
    pub(crate) fn listener_rebound(&mut self, now: Instant) {
        self.advance(now);
        if self.running {
            self.rolling.request(None);
            self.step_rolling(now);
        }
    }
}
