//! The supervisor's policy as a state machine without I/O (quinn-proto style).
//!
//! [`Supervisor`] knows slots, generations, worker phases, deadlines, backoff, rolling
//! restarts, scaling and stopping. It never touches a process, a socket or a clock: the
//! driver feeds it inputs with `now` ([`Supervisor::spawned`], [`Supervisor::ready`],
//! [`Supervisor::exited`], commands, [`Supervisor::handle_timeout`]), then drains the
//! [`Action`]s it queued ([`Supervisor::poll_action`]) and sleeps until
//! [`Supervisor::next_deadline`]. Every rule is therefore testable in microseconds with a
//! fake clock (`core/tests.rs`).

mod commands;
mod inputs;
mod recycle;
mod rolling;
mod rules;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::status::{ClusterStatus, RestartCounts, SlotStatus, WorkerPhase};
use crate::{Event, ExitKind, KillReason, StopCause, WatcherConfig, WorkerExit, WorkerId};

pub(crate) use self::recycle::{Recycle, jitter};
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
    /// Program mode: when it counts as ready if it has not said so (`ready_after`).
    ready_at: Option<Instant>,
    /// Connections it reported accepting (cluster-worker programs).
    accepted: Option<u64>,
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
    /// Recyclings in progress.
    recycling: Vec<recycle::Recycling>,
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
            recycling: Vec::new(),
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
        let workers = self
            .workers
            .values()
            .flat_map(|w| {
                [
                    w.deadline,
                    w.ready_at.filter(|_| w.phase == Phase::Starting),
                ]
            })
            .flatten();
        let respawns = self.slots.iter().filter_map(|s| s.respawn_at);
        let give_up = self.stopping.as_ref().and_then(|s| s.give_up);
        workers
            .chain(respawns)
            .chain(give_up)
            .chain(self.next_recycle())
            .min()
    }

    /// Notes that the driver runs at `now`; a long gap since its last call was a stall of
    /// the watcher, and every deadline moves by it.
    pub(super) fn advance(&mut self, now: Instant) {
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

    pub(super) fn emit(&mut self, event: Event) {
        self.actions.push_back(Action::Emit(event));
    }

    pub(super) fn complete(&mut self, ticket: Ticket, outcome: Outcome) {
        self.actions.push_back(Action::Complete(ticket, outcome));
    }

    /// Deadlines that passed: kills, respawns, giving up on unkillable processes.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        self.recycle_old(now);
        // Program mode: alive for `ready_after` counts as ready.
        let ready: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| w.phase == Phase::Starting && w.ready_at.is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in ready {
            self.ready(id, now);
        }
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

    // ---- status

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
                        accepted: w.accepted,
                        open_connections: None,
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
                    queued: None,
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
