//! The supervisor's policy as a state machine without I/O (quinn-proto style).
//!
//! [`Supervisor`] knows slots, generations, worker phases, deadlines, backoff, rolling
//! restarts, scaling and stopping. It never touches a process, a socket or a clock: the
//! driver feeds it inputs with `now` ([`Supervisor::spawned`], [`Supervisor::ready`],
//! [`Supervisor::exited`], commands, [`Supervisor::handle_timeout`]), then drains the
//! [`Action`]s it queued ([`Supervisor::poll_action`]) and sleeps until
//! [`Supervisor::next_deadline`]. Every rule is therefore testable in microseconds with a
//! fake clock (`core/tests.rs`).

mod rolling;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::status::{ClusterStatus, RestartCounts, SlotStatus, WorkerPhase};
use crate::{Event, ExitKind, KillReason, StopCause, WatcherConfig, WorkerExit, WorkerId};

pub(crate) use self::rolling::Rolling;

/// Identifies a caller waiting for the outcome of a command.
pub(crate) type Ticket = u64;

/// How often at least the driver must call in (a timeout or any input), so that a gap much
/// longer than this means the watcher itself did not run.
pub(crate) const TICK: Duration = Duration::from_millis(250);

/// A gap between two calls longer than this is a stall of the watcher (SIGSTOP, a VM pause,
/// a blocked thread): deadlines are moved by the gap instead of expiring, because a worker's
/// liveness is judged on what it sent, and nothing it sent was read meanwhile.
pub(crate) const STALL: Duration = Duration::from_secs(2);

/// How long after `SIGKILL` a stop waits for a process before it gives up on it (a process
/// in uninterruptible sleep); it is still reaped whenever it ends.
pub(crate) const KILL_GRACE: Duration = Duration::from_secs(10);

/// Why a start, an added worker or a replacement failed (the cloneable core of
/// [`StartError`](crate::StartError)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    Spawn {
        os_error: Option<i32>,
        message: String,
    },
    ExitedBeforeReady {
        id: WorkerId,
        pid: u32,
        status: ExitKind,
    },
    NotReady {
        id: WorkerId,
        pid: u32,
        timeout: Duration,
    },
    ZeroWorkers,
    AlreadyStarted,
    NotRunning,
}

/// The answer to a command, for the ticket that asked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    Started(Result<(), Failure>),
    Added(Result<WorkerId, Failure>),
    Removed(Option<WorkerExit>),
    Scaled(Result<(), Failure>),
    Restarted(Result<(), Failure>),
    Stopped(Vec<WorkerExit>),
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// Start a process for this slot and generation, then report [`Supervisor::spawned`] or
    /// [`Supervisor::spawn_failed`].
    Spawn(WorkerId),
    /// The worker may receive connections (round-robin).
    Admit(WorkerId),
    /// Ask the worker to finish in-flight work and exit; it gets no new connections.
    Stop(WorkerId),
    /// `SIGKILL` to the worker's process group.
    Kill { id: WorkerId, pid: u32 },
    /// Report an event.
    Emit(Event),
    /// Answer a waiting caller.
    Complete(Ticket, Outcome),
}

/// Where a worker process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting,
    Ready,
    Stopping,
    Killed,
}

#[derive(Debug)]
struct Worker {
    pid: u32,
    phase: Phase,
    started: Instant,
    /// When the current phase's deadline passes, and what happens then.
    deadline: Option<Instant>,
    last_heartbeat: Option<Instant>,
    stop: Option<StopCause>,
    kill: Option<KillReason>,
}

#[derive(Debug, Default)]
struct Slot {
    wanted: bool,
    generation: u32,
    current: Option<WorkerId>,
    /// Delay before the next respawn after an early end (0 for the first).
    backoff: Duration,
    /// A respawn waits for this moment.
    respawn_at: Option<Instant>,
    restarts: RestartCounts,
    last_exit: Option<WorkerExit>,
}

/// A caller waiting for a worker to become ready.
#[derive(Debug, Clone, Copy)]
enum ReadyWaiter {
    Start,
    Add(Ticket),
}

/// The supervisor policy. See the module docs.
#[derive(Debug)]
pub(crate) struct Supervisor {
    config: WatcherConfig,
    running: bool,
    slots: Vec<Slot>,
    workers: BTreeMap<WorkerId, Worker>,
    /// `start`: its ticket and the initial workers not ready yet.
    starting: Option<(Ticket, Vec<WorkerId>)>,
    ready_waiters: Vec<(WorkerId, ReadyWaiter)>,
    exit_waiters: Vec<(WorkerId, Ticket)>,
    rolling: Rolling,
    /// `stop`: tickets, the exits collected, and when to give up on killed workers.
    stopping: Option<Stopping>,
    last_call: Option<Instant>,
    actions: VecDeque<Action>,
    /// Set when the set of workers or their phases changed (the driver republishes).
    changed: bool,
    /// Rolling restarts completed and failed, for the status.
    rolling_done: (u64, u64),
}

#[derive(Debug, Default)]
struct Stopping {
    tickets: Vec<Ticket>,
    exits: Vec<WorkerExit>,
    give_up: Option<Instant>,
}

impl Supervisor {
    pub(crate) fn new(config: WatcherConfig) -> Self {
        Self {
            config,
            running: false,
            slots: Vec::new(),
            workers: BTreeMap::new(),
            starting: None,
            ready_waiters: Vec::new(),
            exit_waiters: Vec::new(),
            rolling: Rolling::default(),
            stopping: None,
            last_call: None,
            actions: VecDeque::new(),
            changed: false,
            rolling_done: (0, 0),
        }
    }

    /// The next action for the driver.
    pub(crate) fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Whether the workers or their phases changed since the last call.
    pub(crate) fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    pub(crate) fn is_running(&self) -> bool {
        self.running
    }

    /// Whether nothing is left to supervise: not running, no process alive.
    pub(crate) fn is_idle(&self) -> bool {
        !self.running && self.workers.is_empty()
    }

    /// The earliest moment something is due. The driver calls
    /// [`handle_timeout`](Self::handle_timeout) then, or after [`TICK`], whichever is first.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let workers = self.workers.values().filter_map(|w| w.deadline);
        let respawns = self.slots.iter().filter_map(|s| s.respawn_at);
        let give_up = self.stopping.as_ref().and_then(|s| s.give_up);
        workers.chain(respawns).chain(give_up).min()
    }

    /// Notes that the driver runs at `now`; a long gap since its last call was a stall of
    /// the watcher, and every deadline moves by it.
    fn advance(&mut self, now: Instant) {
        if let Some(last) = self.last_call.replace(now) {
            let gap = now.saturating_duration_since(last);
            if gap > STALL {
                // The driver was not running for about `gap - TICK`: nothing a worker sent
                // was read, so nothing a worker did not send may be held against it.
                let shift = gap - TICK;
                for worker in self.workers.values_mut() {
                    if let Some(deadline) = &mut worker.deadline {
                        *deadline += shift;
                    }
                }
                for slot in &mut self.slots {
                    if let Some(at) = &mut slot.respawn_at {
                        *at += shift;
                    }
                }
                if let Some(give_up) = self.stopping.as_mut().and_then(|s| s.give_up.as_mut()) {
                    *give_up += shift;
                }
                self.emit(Event::WatcherStalled { duration: gap });
            }
        }
    }

    fn emit(&mut self, event: Event) {
        self.actions.push_back(Action::Emit(event));
    }

    fn complete(&mut self, ticket: Ticket, outcome: Outcome) {
        self.actions.push_back(Action::Complete(ticket, outcome));
    }

    // ---- commands -------------------------------------------------------------------------

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
        self.slots.clear();
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
        while self.wanted_slots() < count {
            self.add_slot(now);
        }
        while self.wanted_slots() > count {
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
        self.rolling.request(ticket);
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
            for (_, waiter) in std::mem::take(&mut self.ready_waiters) {
                if let ReadyWaiter::Add(ticket) = waiter {
                    self.complete(ticket, Outcome::Added(Err(Failure::NotRunning)));
                }
            }
            for slot in &mut self.slots {
                slot.wanted = false;
                slot.current = None;
                slot.respawn_at = None;
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

    // ---- inputs from the driver -----------------------------------------------------------

    /// The process for `id` runs as `pid`.
    pub(crate) fn spawned(&mut self, id: WorkerId, pid: u32, now: Instant) {
        self.advance(now);
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        worker.pid = pid;
        worker.started = now;
        worker.deadline = Some(now + self.config.ready_timeout);
        let stop = worker.stop;
        self.changed = true;
        self.emit(Event::Started { id, pid });
        // Stopped while it was being spawned: tell it now that it can be told.
        if stop.is_some() {
            self.actions.push_back(Action::Stop(id));
            self.set_stopping_deadline(id, now);
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
        self.fail_ready_waiters(id, &failure);
        self.rolling_failed(id, failure, now);
        if self.workers.remove(&id).is_some() {
            self.changed = true;
        }
        let slot = &mut self.slots[id.slot as usize - 1];
        if slot.current == Some(id) {
            slot.current = None;
            slot.restarts.crashed += 1;
            // Counts as an end at start-up: a missing binary must not respawn hot.
            self.respawn_after_exit(id, Duration::ZERO, now);
        }
        self.finish_stop_if_done();
    }

    /// The worker reported ready.
    pub(crate) fn ready(&mut self, id: WorkerId, now: Instant) {
        self.advance(now);
        let heartbeat_timeout = self.config.heartbeat_timeout;
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        if worker.phase != Phase::Starting {
            return;
        }
        worker.phase = Phase::Ready;
        worker.last_heartbeat = Some(now);
        worker.deadline = Some(now + heartbeat_timeout);
        let pid = worker.pid;
        self.changed = true;
        self.emit(Event::Ready { id, pid });
        self.actions.push_back(Action::Admit(id));
        let replacing = self.rolling.is_replacement(id);
        for waiter in self.take_ready_waiters(id) {
            match waiter {
                ReadyWaiter::Start => self.initial_ready(id),
                ReadyWaiter::Add(ticket) => self.complete(ticket, Outcome::Added(Ok(id))),
            }
        }
        if replacing {
            self.replacement_ready(id, now);
        }
    }

    /// A heartbeat from the worker.
    pub(crate) fn heartbeat(&mut self, id: WorkerId, now: Instant) {
        self.advance(now);
        let timeout = self.config.heartbeat_timeout;
        if let Some(worker) = self.workers.get_mut(&id) {
            worker.last_heartbeat = Some(now);
            if worker.phase == Phase::Ready {
                worker.deadline = Some(now + timeout);
            }
        }
    }

    /// The worker broke the protocol on its control socket: it is killed.
    pub(crate) fn bad_traffic(&mut self, id: WorkerId, now: Instant) {
        self.advance(now);
        self.kill(id, KillReason::BadTraffic);
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
            worker.deadline = Some(worker.deadline.map_or(limit, |d| d.min(limit)));
        }
    }

    /// The process ended (and everything it sent was read).
    pub(crate) fn exited(&mut self, id: WorkerId, status: ExitKind, now: Instant) {
        self.advance(now);
        let Some(worker) = self.workers.remove(&id) else {
            return;
        };
        self.changed = true;
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
        // Waiters for its readiness are still registered only if it never became ready.
        self.fail_ready_waiters(id, &failure);
        self.rolling_failed(id, failure, now);
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
        let slot = &mut self.slots[id.slot as usize - 1];
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
            if self.running && slot.wanted && !self.rolling.replaces(id.slot) {
                let uptime = now.saturating_duration_since(worker.started);
                self.respawn_after_exit(id, uptime, now);
            }
        }
        self.finish_stop_if_done();
    }

    /// Deadlines that passed: kills, respawns, giving up on unkillable processes.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        let due: Vec<(WorkerId, Phase)> = self
            .workers
            .iter()
            .filter(|(_, w)| w.deadline.is_some_and(|d| d <= now))
            .map(|(id, w)| (*id, w.phase))
            .collect();
        for (id, phase) in due {
            let reason = match phase {
                Phase::Starting => KillReason::ReadyTimeout,
                Phase::Ready => KillReason::HeartbeatTimeout,
                Phase::Stopping => KillReason::ShutdownTimeout,
                Phase::Killed => {
                    // It ignored SIGKILL (uninterruptible sleep): stop waiting for it here.
                    if let Some(worker) = self.workers.get_mut(&id) {
                        worker.deadline = None;
                    }
                    continue;
                }
            };
            self.kill(id, reason);
            if let Some(worker) = self.workers.get_mut(&id) {
                worker.deadline = Some(now + KILL_GRACE);
            }
        }
        let respawns: Vec<u32> = (1..=self.slots.len() as u32)
            .filter(|s| {
                self.slots[*s as usize - 1]
                    .respawn_at
                    .is_some_and(|at| at <= now)
            })
            .collect();
        for slot in respawns {
            self.slots[slot as usize - 1].respawn_at = None;
            if self.running && self.slots[slot as usize - 1].wanted {
                self.spawn_in_slot(slot, true, now);
            }
        }
        self.finish_stop_if_done();
        if let Some(stopping) = &mut self.stopping
            && stopping.give_up.is_some_and(|at| at <= now)
        {
            stopping.give_up = None;
            self.finish_stop(true);
        }
    }

    // ---- the rules --------------------------------------------------------------------------

    fn wanted_slots(&self) -> usize {
        self.slots.iter().filter(|s| s.wanted).count()
    }

    fn add_slot(&mut self, now: Instant) -> WorkerId {
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
    fn remove_slot(&mut self, now: Instant) -> Option<Option<WorkerId>> {
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
    fn spawn_in_slot(&mut self, slot: u32, current: bool, now: Instant) -> WorkerId {
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
                stop: None,
                kill: None,
            },
        );
        self.changed = true;
        self.actions.push_back(Action::Spawn(id));
        id
    }

    fn stop_worker(&mut self, id: WorkerId, cause: StopCause, now: Instant) {
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

    fn set_stopping_deadline(&mut self, id: WorkerId, now: Instant) {
        let timeout = self.config.shutdown_timeout;
        if let Some(worker) = self.workers.get_mut(&id) {
            worker.phase = Phase::Stopping;
            worker.deadline = Some(now + timeout);
        }
    }

    fn kill(&mut self, id: WorkerId, reason: KillReason) {
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
    fn respawn_after_exit(&mut self, id: WorkerId, uptime: Duration, now: Instant) {
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

    fn schedule_respawn(&mut self, id: WorkerId, delay: Duration, now: Instant) {
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

    fn take_ready_waiters(&mut self, id: WorkerId) -> Vec<ReadyWaiter> {
        let waiters = self
            .ready_waiters
            .iter()
            .filter(|(w, _)| *w == id)
            .map(|(_, waiter)| *waiter)
            .collect();
        self.ready_waiters.retain(|(w, _)| *w != id);
        waiters
    }

    fn fail_ready_waiters(&mut self, id: WorkerId, failure: &Failure) {
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

    fn initial_ready(&mut self, id: WorkerId) {
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

    fn finish_stop_if_done(&mut self) {
        let Some(stopping) = &mut self.stopping else {
            return;
        };
        if self.running {
            return;
        }
        if self.workers.is_empty() {
            self.finish_stop(false);
        } else if stopping.give_up.is_none()
            && self.workers.values().all(|w| w.phase == Phase::Killed)
        {
            // Only killed processes remain: they get KILL_GRACE, then the stop returns.
            let latest = self.workers.values().filter_map(|w| w.deadline).max();
            stopping.give_up = latest;
        }
    }

    fn finish_stop(&mut self, gave_up: bool) {
        let Some(stopping) = self.stopping.take() else {
            return;
        };
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

    // ---- status -------------------------------------------------------------------------------

    /// A snapshot for `ClusterWatcher::status`.
    pub(crate) fn status(&self, now: Instant) -> ClusterStatus {
        let slots = self
            .slots
            .iter()
            .enumerate()
            .filter(|(index, s)| {
                s.wanted || self.workers.keys().any(|id| id.slot as usize == index + 1)
            })
            .map(|(index, s)| {
                let number = index as u32 + 1;
                let workers = self
                    .workers
                    .iter()
                    .filter(|(id, _)| id.slot == number)
                    .map(|(id, w)| crate::status::WorkerStatus {
                        id: *id,
                        pid: w.pid,
                        phase: match (w.phase, w.stop) {
                            (Phase::Starting, _) => WorkerPhase::Starting,
                            (Phase::Ready, _) => WorkerPhase::Ready,
                            (Phase::Stopping, _) | (Phase::Killed, Some(_)) => {
                                WorkerPhase::Stopping
                            }
                            (Phase::Killed, None) => WorkerPhase::Killed,
                        },
                        current: s.current == Some(*id),
                        uptime: now.saturating_duration_since(w.started),
                        heartbeat_age: w.last_heartbeat.map(|t| now.saturating_duration_since(t)),
                    })
                    .collect();
                SlotStatus {
                    slot: number,
                    wanted: s.wanted,
                    generation: s.generation,
                    workers,
                    backing_off: s.respawn_at.map(|at| at.saturating_duration_since(now)),
                    restarts: s.restarts,
                    last_exit: s.last_exit,
                }
            })
            .collect();
        ClusterStatus {
            running: self.running,
            slots,
            rolling_restart: self.rolling.progress(),
            rolling_restarts_completed: self.rolling_done.0,
            rolling_restarts_failed: self.rolling_done.1,
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
