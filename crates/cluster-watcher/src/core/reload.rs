//! Reloads: a new configuration applied slot by slot, kept once every worker of it has been
//! ready for `min_uptime`, and rolled back to the last good one otherwise.
//!
//! A reload swaps the configuration the driver spawns with ([`Action::Configure`]), scales
//! to the new worker count (new slots start with the new configuration), and replaces every
//! other slot through the rolling-restart path, readiness first. It is then on probation:
//! if a worker of the new configuration fails to start, is not ready in time, or ends on its
//! own (or is killed for hanging) before it was ready for `min_uptime`, the previous
//! configuration and worker count come back, the slots running the failed one are replaced
//! the same way, and the reload is answered with the reason once every slot serves the old
//! configuration again. Workers carry the generation of the configuration they were started
//! with; generations count from 1.

use std::sync::Arc;
use std::time::Instant;

use super::{Action, Failure, Outcome, Phase, Supervisor, Ticket, Timer, Worker};
use crate::{Event, StopCause, WatcherConfig, WorkerId};

/// A reload under way.
#[derive(Debug)]
struct Attempt {
    ticket: Ticket,
    /// The configuration that served before, its generation and worker count.
    previous: Arc<WatcherConfig>,
    previous_generation: u64,
    previous_workers: usize,
    /// What the new configuration changed, as the caller named it.
    changed: Vec<String>,
    /// Set once it failed: the reason, while the old configuration comes back.
    failed: Option<Failure>,
    /// When the rollback began (answered after the ready timeout at the latest).
    since: Instant,
}

/// A reload that was rolled back: the generation it had, what it changed, and why.
#[derive(Debug, Clone)]
pub(crate) struct FailedReload {
    pub(crate) generation: u64,
    pub(crate) changed: Vec<String>,
    pub(crate) failure: Failure,
    pub(crate) program: std::path::PathBuf,
    pub(crate) at: Instant,
}

/// The configurations of a [`Supervisor`]: which generation serves, and the reload under
/// way.
#[derive(Debug)]
pub(crate) struct Reloads {
    /// The generation of the configuration workers are started with now.
    pub(super) generation: u64,
    /// The highest generation given out (a rolled-back one is not given again).
    latest: u64,
    /// When the serving configuration was loaded, and what it changed.
    pub(super) loaded: Option<Instant>,
    pub(super) changed: Vec<String>,
    attempt: Option<Attempt>,
    pub(super) last_failed: Option<FailedReload>,
}

impl Default for Reloads {
    fn default() -> Self {
        Self {
            generation: 1,
            latest: 1,
            loaded: None,
            changed: Vec::new(),
            attempt: None,
            last_failed: None,
        }
    }
}

impl Reloads {
    /// The generation being tried, while a reload is on probation.
    pub(super) fn trying(&self) -> Option<u64> {
        self.attempt
            .as_ref()
            .filter(|a| a.failed.is_none())
            .map(|_| self.generation)
    }

    /// Ends the reload under way (the cluster stops); returns its ticket.
    pub(super) fn cancel(&mut self) -> Option<Ticket> {
        self.attempt.take().map(|a| a.ticket)
    }
}

impl Supervisor {
    /// Runs `config` with `workers` slots from now on, as the module docs say; `ticket` is
    /// answered once it is kept, or rolled back.
    pub(crate) fn reload(
        &mut self,
        ticket: Ticket,
        config: Arc<WatcherConfig>,
        workers: usize,
        changed: Vec<String>,
        now: Instant,
    ) {
        self.advance(now);
        let refused = if !self.running {
            Some(Failure::NotRunning)
        } else if workers == 0 {
            Some(Failure::ZeroWorkers)
        } else if self.reloads.attempt.is_some() {
            Some(Failure::ReloadUnderWay)
        } else {
            None
        };
        if let Some(failure) = refused {
            return self.complete(ticket, Outcome::Reloaded(Err(failure)));
        }
        self.reloads.attempt = Some(Attempt {
            ticket,
            previous: std::mem::replace(&mut self.config, config.clone()),
            previous_generation: self.reloads.generation,
            previous_workers: self.slots.wanted(),
            changed: changed.clone(),
            failed: None,
            since: now,
        });
        self.reloads.latest += 1;
        self.reloads.generation = self.reloads.latest;
        self.emit(Event::Reloading {
            generation: self.reloads.generation,
            changed,
        });
        self.actions.push_back(Action::Configure(config));
        // A limit the new configuration sets (`max_memory`) is watched from now on.
        self.arm_periodic(now);
        // New slots start with the new configuration; the others are replaced.
        self.resize(workers, now);
        self.rolling.request_stale();
        self.step_rolling(now);
    }

    /// Adds or removes slots until `count` are wanted.
    fn resize(&mut self, count: usize, now: Instant) {
        while self.slots.wanted() < count {
            self.add_slot(now);
        }
        while self.slots.wanted() > count {
            if self.remove_slot(now).is_none() {
                break;
            }
        }
    }

    /// A worker ended, or could not be started: if it ran the configuration on probation and
    /// ended on its own before it proved itself, the reload is rolled back.
    pub(super) fn reload_watch_end(
        &mut self,
        id: WorkerId,
        worker: Option<Worker>,
        failure: Failure,
        now: Instant,
    ) {
        let Some(trying) = self.reloads.trying() else {
            return;
        };
        let failed = match &worker {
            // Could not be spawned.
            None => true,
            Some(w) if w.config != trying => false,
            // Stopped by the watcher for its own reasons (replaced, scaled away): not a
            // failure of the configuration.
            Some(w) if w.stop.is_some_and(|c| c != StopCause::Requested) => false,
            Some(w) => match w.ready_at {
                None => true,
                Some(ready) => {
                    w.ended.unwrap_or(now).saturating_duration_since(ready) < self.config.min_uptime
                }
            },
        };
        if !failed {
            return;
        }
        let failure = match (&worker, failure) {
            (Some(w), Failure::ExitedBeforeReady { status, .. }) if w.ready_at.is_some() => {
                Failure::EndedAfterReady {
                    id,
                    pid: w.pid,
                    status,
                    after: w
                        .ended
                        .unwrap_or(now)
                        .saturating_duration_since(w.ready_at.unwrap_or(now)),
                }
            }
            (_, failure) => failure,
        };
        self.roll_back(failure, now);
    }

    /// The configuration on probation failed: the previous one comes back, with its worker
    /// count, and every slot running the failed one is replaced.
    fn roll_back(&mut self, failure: Failure, now: Instant) {
        let Some(attempt) = &mut self.reloads.attempt else {
            return;
        };
        attempt.failed = Some(failure.clone());
        attempt.since = now;
        let (previous, generation, workers) = (
            attempt.previous.clone(),
            attempt.previous_generation,
            attempt.previous_workers,
        );
        self.reloads.last_failed = Some(FailedReload {
            generation: self.reloads.generation,
            changed: attempt.changed.clone(),
            failure: failure.clone(),
            program: self.config.program.clone(),
            at: now,
        });
        self.emit(Event::RollingBack {
            generation: self.reloads.generation,
            back_to: generation,
            reason: failure.into_error(&self.config.program).to_string(),
        });
        self.config = previous.clone();
        self.reloads.generation = generation;
        self.actions.push_back(Action::Configure(previous));
        self.arm_periodic(now);
        // The replacements starting run the failed configuration: they go, the workers they
        // were to replace stay.
        for id in self.rolling.abandon_round() {
            self.stop_worker(id, StopCause::Replaced, now);
        }
        // Answered, back or not, once the old configuration had its ready timeout.
        self.timers
            .set(Timer::Reload, now + self.config.ready_timeout);
        self.resize(workers, now);
        self.rolling.request_stale();
        self.step_rolling(now);
    }

    /// Moves the reload on: kept once every slot's worker runs it and has been ready for
    /// `min_uptime`; after a rollback, answered once every slot serves the old configuration
    /// again (or the ready timeout passed).
    pub(super) fn reload_progress(&mut self, now: Instant) {
        let Some(attempt) = &self.reloads.attempt else {
            return;
        };
        if self.rolling.progress().is_some() {
            return;
        }
        let generation = self.reloads.generation;
        let min_uptime = self.config.min_uptime;
        let mut proven_at = Some(now);
        for (_, slot) in self.slots.iter() {
            if !slot.wanted {
                continue;
            }
            let worker = slot.current.and_then(|id| self.workers.get(&id));
            let at = match worker {
                Some(w) if w.config == generation && w.phase == Phase::Ready => {
                    w.ready_at.map(|r| r + min_uptime)
                }
                _ => None,
            };
            proven_at = match (proven_at, at) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
        }
        let rolled_back = attempt.failed.is_some();
        let gave_up = rolled_back && self.timers.get(Timer::Reload).is_none_or(|at| at <= now);
        let outcome = match proven_at {
            Some(at) if rolled_back || at <= now => true,
            Some(at) => {
                self.timers.set(Timer::Reload, at);
                false
            }
            None => gave_up,
        };
        if outcome {
            self.finish_reload(now);
        }
    }

    /// Answers the reload: kept, or rolled back with its reason.
    fn finish_reload(&mut self, now: Instant) {
        let Some(attempt) = self.reloads.attempt.take() else {
            return;
        };
        self.timers.stop(Timer::Reload);
        let result = match attempt.failed {
            None => {
                self.reloads.loaded = Some(now);
                self.reloads.changed = attempt.changed;
                self.reloads.last_failed = None;
                self.emit(Event::Reloaded {
                    generation: self.reloads.generation,
                });
                Ok(())
            }
            Some(failure) => Err(failure),
        };
        self.complete(attempt.ticket, Outcome::Reloaded(result));
    }
}
