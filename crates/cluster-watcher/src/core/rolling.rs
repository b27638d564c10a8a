//! Rolling restarts: which slots are left, which replacements are starting, and the
//! requests that arrived meanwhile (coalesced into one more round).

use std::collections::VecDeque;
use std::time::Instant;

use super::{Failure, Outcome, Phase, Supervisor, Ticket};
use crate::{Event, StopCause, WorkerId};

/// One rolling restart: every slot that had a worker when it began, replaced in turn.
#[derive(Debug, Default)]
struct Round {
    tickets: Vec<Ticket>,
    planned: bool,
    pending: VecDeque<u32>,
    /// Replacements starting: (slot, new worker).
    active: Vec<(u32, WorkerId)>,
    total: usize,
    done: usize,
    failed: usize,
    first_error: Option<Failure>,
    /// Replaces only the slots whose worker runs another configuration than the current
    /// one (a reload's rollback), not every slot.
    stale_only: bool,
}

/// The rolling-restart state of a [`Supervisor`].
#[derive(Debug, Default)]
pub(crate) struct Rolling {
    round: Option<Round>,
    /// Requests that arrived while a round ran: one more round, answered together.
    next: Option<Vec<Ticket>>,
}

impl Rolling {
    /// Asks for a restart (`ticket` waits for it, if any): a new round, or a place in the
    /// next one if a round runs.
    pub(super) fn request(&mut self, ticket: Option<Ticket>) {
        match &mut self.round {
            None => {
                self.round = Some(Round {
                    tickets: ticket.into_iter().collect(),
                    ..Round::default()
                })
            }
            Some(_) => self.next.get_or_insert_with(Vec::new).extend(ticket),
        }
    }

    /// Asks for a round that replaces only the slots running another configuration (a
    /// rollback); requests waiting for a full round keep waiting for it.
    pub(super) fn request_stale(&mut self) {
        match &mut self.round {
            None => {
                self.round = Some(Round {
                    stale_only: true,
                    ..Round::default()
                })
            }
            Some(_) => {
                self.next.get_or_insert_with(Vec::new);
            }
        }
    }

    /// Drops the round under way (a reload failed): its replacements, to be stopped, are
    /// returned; whoever waited for it waits for the next full round.
    pub(super) fn abandon_round(&mut self) -> Vec<WorkerId> {
        let Some(round) = self.round.take() else {
            return Vec::new();
        };
        if !round.tickets.is_empty() || self.next.is_some() {
            self.next.get_or_insert_with(Vec::new).extend(round.tickets);
        }
        round.active.into_iter().map(|(_, id)| id).collect()
    }

    /// Ends everything (the cluster stops); returns the tickets to answer.
    pub(super) fn cancel(&mut self) -> Vec<Ticket> {
        let mut tickets: Vec<Ticket> = self.round.take().map(|r| r.tickets).unwrap_or_default();
        tickets.extend(self.next.take().unwrap_or_default());
        tickets
    }

    /// Whether `id` is a replacement being started.
    pub(super) fn is_replacement(&self, id: WorkerId) -> bool {
        self.round
            .as_ref()
            .is_some_and(|r| r.active.iter().any(|(_, w)| *w == id))
    }

    /// Whether a replacement for `slot` is starting (its successor is on the way, so a
    /// crash of the old worker needs no respawn).
    pub(super) fn replaces(&self, slot: u32) -> bool {
        self.round
            .as_ref()
            .is_some_and(|r| r.active.iter().any(|(s, _)| *s == slot))
    }

    /// The slot was scaled away: it leaves the round; returns its replacements to stop.
    pub(super) fn forget_slot(&mut self, slot: u32) -> Vec<WorkerId> {
        let Some(round) = &mut self.round else {
            return Vec::new();
        };
        let before = round.pending.len();
        round.pending.retain(|s| *s != slot);
        round.total -= before - round.pending.len();
        let gone: Vec<WorkerId> = round
            .active
            .iter()
            .filter(|(s, _)| *s == slot)
            .map(|(_, id)| *id)
            .collect();
        round.active.retain(|(s, _)| *s != slot);
        round.total -= gone.len();
        gone
    }

    /// `(replaced so far, slots in the round)` while a round runs.
    pub(super) fn progress(&self) -> Option<(usize, usize)> {
        self.round.as_ref().map(|r| (r.done, r.total))
    }
}

impl Supervisor {
    /// Whether a worker of `slot` is still being stopped (draining its connections).
    pub(super) fn draining_in(&self, slot: u32) -> bool {
        self.workers
            .iter()
            .any(|(id, w)| id.slot == slot && matches!(w.phase, Phase::Stopping | Phase::Killed))
    }

    /// Whether `slot`'s worker runs another configuration than the current one.
    fn runs_stale(&self, slot: u32) -> bool {
        self.slots[slot]
            .current
            .and_then(|id| self.workers.get(&id))
            .is_some_and(|w| w.config != self.reloads.generation)
    }

    /// Starts replacements up to `restart_parallelism`; finishes the round when nothing is
    /// left, and starts the coalesced next one.
    pub(super) fn step_rolling(&mut self, now: Instant) {
        loop {
            let Some(mut round) = self.rolling.round.take() else {
                return;
            };
            if !round.planned {
                round.planned = true;
                round.pending = self
                    .slots
                    .iter()
                    .filter(|(_, slot)| slot.wanted && slot.current.is_some())
                    .map(|(number, _)| number)
                    .filter(|number| !round.stale_only || self.runs_stale(*number))
                    .collect();
                round.total = round.pending.len();
                self.emit(Event::RestartStarted {
                    workers: round.total,
                });
            }
            let parallelism = self.config.restart_parallelism.max(1);
            while round.active.len() < parallelism {
                // At most two generations alive in a slot: one whose previous worker still
                // drains waits until it is gone.
                let Some(next) = round.pending.iter().position(|s| !self.draining_in(*s)) else {
                    break;
                };
                let Some(slot) = round.pending.remove(next) else {
                    break;
                };
                let s = &self.slots[slot];
                if !s.wanted || s.current.is_none() || (round.stale_only && !self.runs_stale(slot))
                {
                    // Gone, or respawning already (with the new program).
                    round.done += 1;
                    continue;
                }
                let id = self.spawn_in_slot(slot, false, now);
                round.active.push((slot, id));
            }
            if !round.active.is_empty() || !round.pending.is_empty() {
                self.rolling.round = Some(round);
                return;
            }
            let result = match round.first_error {
                None => {
                    self.rolling_done.0 += 1;
                    Ok(())
                }
                Some(error) => {
                    self.rolling_done.1 += 1;
                    Err(error)
                }
            };
            self.emit(Event::RestartFinished {
                replaced: round.done - round.failed.min(round.done),
                failed: round.failed,
            });
            let current = self.slots.iter().filter_map(|(_, s)| s.current).collect();
            self.actions
                .push_back(super::Action::ReleaseUnusedListeners(current));
            for ticket in round.tickets {
                self.complete(ticket, Outcome::Restarted(result.clone()));
            }
            self.rolling.round = self.rolling.next.take().map(|tickets| Round {
                tickets,
                ..Round::default()
            });
            self.reload_progress(now);
        }
    }

    /// A replacement is ready: it becomes the slot's worker and the old one drains.
    pub(super) fn replacement_ready(&mut self, id: WorkerId, now: Instant) {
        let Some(round) = &mut self.rolling.round else {
            return;
        };
        round.active.retain(|(_, w)| *w != id);
        round.done += 1;
        let slot = &mut self.slots[id.slot];
        let old = slot.current.replace(id);
        slot.restarts.rolling += 1;
        if let Some(old) = old {
            self.stop_worker(old, StopCause::Replaced, now);
        }
        self.step_rolling(now);
    }

    /// A replacement failed (exited or killed before ready, or could not be spawned): the
    /// old worker keeps serving; the round goes on and reports the first failure.
    pub(super) fn rolling_failed(&mut self, id: WorkerId, failure: Failure, now: Instant) {
        let Some(round) = &mut self.rolling.round else {
            return;
        };
        if !round.active.iter().any(|(_, w)| *w == id) {
            return;
        }
        round.active.retain(|(_, w)| *w != id);
        round.done += 1;
        round.failed += 1;
        round.first_error.get_or_insert(failure);
        // The old worker may have ended while its successor was starting: respawn now.
        let slot = &self.slots[id.slot];
        let backing_off = self.timers.get(super::Timer::Respawn(id.slot)).is_some();
        if self.running && slot.wanted && slot.current.is_none() && !backing_off {
            self.respawn_after_exit(id, super::rules::End::at_start(), now);
        }
        self.step_rolling(now);
    }
}
