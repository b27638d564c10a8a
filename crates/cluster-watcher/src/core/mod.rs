//! The supervisor's policy as a state machine without I/O (quinn-proto style).
//!
//! [`Supervisor`] knows slots, generations, worker phases, backoff, rolling restarts,
//! recycling, scaling, stopping and, in reuseport mode, which slots take new connections. It
//! never touches a process, a socket or a clock: the driver feeds it inputs with `now`
//! (`inputs.rs`: spawned, ready, heartbeat, exited, and what it measured when asked:
//! memory, accept queues, a rebound listener), commands (`commands.rs`), and
//! [`Supervisor::handle_timeout`] when [`Supervisor::poll_timeout`] comes; then it drains the
//! [`Action`]s queued ([`Supervisor::poll_action`]). Every timer is one entry of one
//! [`TimerTable`](timers::TimerTable); every rule is unit-tested with a fake clock
//! (`core/tests/`).
//!
//! * `slots.rs`: the slots, numbered from 1.
//! * `rules.rs`: spawning, stopping, killing, backoff.
//! * `rolling.rs`: rolling restarts ([`Rolling`]).
//! * `recycle.rs`: recycling by age, memory and connection count.
//! * `reuseport.rs`: draining a slot before its worker stops, stalled slots, steering.
//! * `status.rs`: the [`ClusterStatus`] snapshot.

mod commands;
mod inputs;
mod observe;
mod rebalance;
mod recycle;
mod reload;
mod reuseport;
mod rolling;
mod rules;
mod slots;
mod slowstart;
mod status;
#[cfg(test)]
mod tests;
mod timers;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{Event, ExitKind, KillReason, StopCause, WatcherConfig, WorkerExit, WorkerId};

pub(crate) use self::observe::Observation;
use self::reload::Reloads;
use self::reuseport::Reuseport;
pub(crate) use self::rolling::Rolling;
use self::slots::SlotTable;
use self::timers::{Timer, TimerTable};

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

/// How often the workers' memory is measured with `max_memory`.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// How often the shared listening sockets are checked.
const CHECK_LISTENERS_EVERY: Duration = Duration::from_secs(2);

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
    /// A worker of a reloaded configuration ended on its own within `min_uptime` of
    /// becoming ready.
    EndedAfterReady {
        id: WorkerId,
        pid: u32,
        status: ExitKind,
        after: Duration,
    },
    ZeroWorkers,
    AlreadyStarted,
    NotRunning,
    ReloadUnderWay,
}

impl Failure {
    /// The public error; `program` is the configuration's program that was run.
    pub(crate) fn into_error(self, program: &std::path::Path) -> crate::StartError {
        use crate::StartError;
        match self {
            Self::Spawn { os_error, message } => StartError::Spawn {
                program: program.to_owned(),
                source: match os_error {
                    Some(code) => std::io::Error::from_raw_os_error(code),
                    None => std::io::Error::other(message),
                },
            },
            Self::ExitedBeforeReady { id, pid, status } => {
                StartError::ExitedBeforeReady { id, pid, status }
            }
            Self::NotReady { id, pid, timeout } => StartError::NotReady { id, pid, timeout },
            Self::EndedAfterReady {
                id,
                pid,
                status,
                after,
            } => StartError::EndedAfterReady {
                id,
                pid,
                status,
                after,
            },
            Self::ZeroWorkers => StartError::ZeroWorkers,
            Self::AlreadyStarted => StartError::AlreadyStarted,
            Self::NotRunning => StartError::NotRunning,
            Self::ReloadUnderWay => StartError::ReloadUnderWay,
        }
    }
}

/// The answer to a command, for the ticket that asked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    Started(Result<(), Failure>),
    Added(Result<WorkerId, Failure>),
    Removed(Option<WorkerExit>),
    Scaled(Result<(), Failure>),
    Restarted(Result<(), Failure>),
    Reloaded(Result<(), Failure>),
    Stopped(Vec<WorkerExit>),
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// Workers started from now on run this configuration (a reload, or its rollback).
    Configure(Arc<WatcherConfig>),
    /// Program mode: look at a starting worker and report [`Supervisor::observed`].
    Observe { id: WorkerId, pid: u32 },
    /// Start a process for this slot and generation, then report [`Supervisor::spawned`] or
    /// [`Supervisor::spawn_failed`].
    Spawn(WorkerId),
    /// The worker may receive connections (round-robin).
    Admit(WorkerId),
    /// Ask the worker to finish in-flight work and exit; it gets no new connections. With
    /// `spread`, its goodbyes to long-lived connections are spread over the drain window
    /// (a restart, a scale-down, a recycling); a stop of the cluster says them at once.
    Stop { id: WorkerId, spread: bool },
    /// `SIGKILL` to the worker's process group.
    Kill { id: WorkerId, pid: u32 },
    /// Report an event.
    Emit(Event),
    /// Answer a waiting caller.
    Complete(Ticket, Outcome),
    /// Measure these workers' memory (pid given) and report [`Supervisor::memory`].
    SampleMemory(Vec<(WorkerId, u32)>),
    /// Look at the shared listening sockets (and with `queues`, their accept queues) and
    /// report [`Supervisor::listener_rebound`] if one had to be bound anew.
    CheckListeners { queues: bool },
    /// Reuseport: read every slot's accept queue and report [`Supervisor::queues`].
    PollQueues,
    /// Reuseport: new connections go to these slots only (none: every slot).
    Steer(BTreeSet<u32>),
    /// Reuseport: the slot is gone for good; close its sockets (and steer again, the
    /// group's order changed).
    ReleaseSlot(u32),
    /// A rolling restart finished: close listening sockets none of these current workers
    /// asked for.
    ReleaseUnusedListeners(Vec<WorkerId>),
    /// `slow_start`: the shares of new connections of the workers still ramping up, in
    /// thousandths (a worker not listed has a full share).
    Weights(BTreeMap<WorkerId, u16>),
    /// Live rebalancing: ask each of `asks` to hand back that many idle keep-alive
    /// connections, and give what comes back first to `wants`, that many each.
    Rebalance {
        wants: Vec<(WorkerId, u32)>,
        asks: Vec<(WorkerId, u32)>,
    },
}

/// Where a worker process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting,
    Ready,
    Stopping,
    Killed,
}

#[derive(Debug, Clone, Copy)]
struct Worker {
    pid: u32,
    phase: Phase,
    started: Instant,
    /// The generation of the configuration it was started with.
    config: u64,
    /// When it reported ready.
    ready_at: Option<Instant>,
    /// Program mode: seen running an event loop (an epoll set), so it is waited for.
    event_loop: bool,
    /// Whether it ever reported ready.
    was_ready: bool,
    /// Connections open in it, as it last reported.
    open: Option<u64>,
    /// When it last reported them.
    open_at: Option<Instant>,
    /// When its main process ended (its output may still be read).
    ended: Option<Instant>,
    last_heartbeat: Option<Instant>,
    /// Connections it reported accepting (cluster-worker programs).
    accepted: Option<u64>,
    /// HTTP requests it reported answering (cluster-worker serve loops).
    requests: Option<u64>,
    stop: Option<StopCause>,
    kill: Option<KillReason>,
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
    config: Arc<WatcherConfig>,
    running: bool,
    slots: SlotTable,
    workers: BTreeMap<WorkerId, Worker>,
    /// `start`: its ticket and the initial workers not ready yet.
    starting: Option<(Ticket, Vec<WorkerId>)>,
    ready_waiters: Vec<(WorkerId, ReadyWaiter)>,
    exit_waiters: Vec<(WorkerId, Ticket)>,
    rolling: Rolling,
    /// `stop`: tickets and the exits collected.
    stopping: Option<Stopping>,
    timers: TimerTable,
    last_call: Option<Instant>,
    actions: VecDeque<Action>,
    /// Set when the set of workers or their phases changed (the driver republishes).
    changed: bool,
    /// Rolling restarts completed and failed, for the status.
    rolling_done: (u64, u64),
    /// Recyclings in progress.
    recycling: Vec<recycle::Recycling>,
    /// Reuseport: drains, stalled slots, steering.
    reuseport: Reuseport,
    /// The configuration's generation and the reload under way.
    reloads: Reloads,
    /// The weights of workers in their slow start, as last published.
    slow_start: slowstart::SlowStart,
    /// The rebalancing under way, toward a newcomer.
    rebalancing: Option<rebalance::Rebalancing>,
}

#[derive(Debug, Default)]
struct Stopping {
    tickets: Vec<Ticket>,
    exits: Vec<WorkerExit>,
}

impl Supervisor {
    pub(crate) fn new(config: Arc<WatcherConfig>) -> Self {
        let reuseport = Reuseport::new(config.balance.traits().socket_per_slot);
        Self {
            config,
            running: false,
            slots: SlotTable::default(),
            workers: BTreeMap::new(),
            starting: None,
            ready_waiters: Vec::new(),
            exit_waiters: Vec::new(),
            rolling: Rolling::default(),
            stopping: None,
            timers: TimerTable::default(),
            last_call: None,
            actions: VecDeque::new(),
            changed: false,
            rolling_done: (0, 0),
            recycling: Vec::new(),
            reuseport,
            reloads: Reloads::default(),
            slow_start: slowstart::SlowStart::default(),
            rebalancing: None,
        }
    }

    /// The next action for the driver.
    pub(crate) fn poll_action(&mut self) -> Option<Action> {
        if self.actions.is_empty()
            && let Some(live) = self.steering()
        {
            return Some(Action::Steer(live));
        }
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

    /// When the driver must call [`handle_timeout`](Self::handle_timeout) next (if no input
    /// comes first): the earliest armed timer.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Notes that the driver runs at `now`; a long gap since its last call was a stall of
    /// the watcher, and every deadline moves by it.
    pub(super) fn advance(&mut self, now: Instant) {
        if let Some(last) = self.last_call.replace(now) {
            let gap = now.saturating_duration_since(last);
            if gap > STALL {
                // The driver was not running for about `gap - TICK`: nothing a worker sent
                // was read, so nothing a worker did not send may be held against it.
                self.timers.shift(gap - TICK);
                self.emit(Event::WatcherStalled { duration: gap });
            }
        }
        self.timers.set(Timer::Tick, now + TICK);
    }

    pub(super) fn emit(&mut self, event: Event) {
        self.actions.push_back(Action::Emit(event));
    }

    pub(super) fn complete(&mut self, ticket: Ticket, outcome: Outcome) {
        self.actions.push_back(Action::Complete(ticket, outcome));
    }

    /// The workers or their phases changed: the driver republishes, reuseport re-steers.
    pub(super) fn touch(&mut self) {
        self.changed = true;
        self.reuseport.touch();
    }

    /// Every timer due at `now`.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        while let Some(timer) = self.timers.pop_expired(now) {
            self.expire(timer, now);
        }
        self.finish_stop_if_done();
    }

    fn expire(&mut self, timer: Timer, now: Instant) {
        match timer {
            Timer::Tick => {}
            Timer::ReadyAfter(id) => self.ready_after_due(id, now),
            Timer::Observe(id) => self.observe_due(id, now),
            Timer::Phase(id) => self.phase_expired(id, now),
            Timer::Respawn(slot) => {
                if self.running && self.slots.contains(slot) && self.slots[slot].wanted {
                    self.spawn_in_slot(slot, true, now);
                }
            }
            Timer::GiveUp => self.finish_stop(true),
            Timer::MaxAge(id) => self.recycle_old(id, now),
            Timer::DrainLimit(id) => self.drain_limit(id, now),
            Timer::SampleMemory => self.sample_memory(now),
            Timer::CheckListeners => self.check_listeners(now),
            Timer::PollQueues => self.poll_queues(now),
            Timer::Reload => self.reload_progress(now),
            Timer::SlowStart => self.slow_start_due(now),
            Timer::Rebalance => self.rebalance_round(now),
        }
    }

    /// A worker's phase deadline passed: it is killed for it.
    fn phase_expired(&mut self, id: WorkerId, now: Instant) {
        let reason = match self.phase(id) {
            Some(Phase::Starting) => KillReason::ReadyTimeout,
            Some(Phase::Ready) => KillReason::HeartbeatTimeout,
            Some(Phase::Stopping) => KillReason::ShutdownTimeout,
            // It ignored SIGKILL (uninterruptible sleep): a stop gives up on it (GiveUp).
            Some(Phase::Killed) | None => return,
        };
        self.kill(id, reason, now);
    }

    fn phase(&self, id: WorkerId) -> Option<Phase> {
        self.workers.get(&id).map(|w| w.phase)
    }

    /// Arms the periodic looks this configuration needs (at the start, and when a reload or
    /// its rollback changes the configuration).
    pub(super) fn arm_periodic(&mut self, now: Instant) {
        if self.config.max_memory.is_some() {
            self.timers.set(Timer::SampleMemory, now + SAMPLE_EVERY);
        }
        if !self.config.balance.traits().watcher_accepts {
            self.timers
                .set(Timer::CheckListeners, now + CHECK_LISTENERS_EVERY);
        }
        if self.reuseport.enabled() {
            self.timers.set(Timer::PollQueues, now + reuseport::POLL);
        }
    }

    /// `max_memory`: asks the driver to measure every ready current worker.
    fn sample_memory(&mut self, now: Instant) {
        // Not running, or a reload took the limit away.
        if !self.running || self.config.max_memory.is_none() {
            return;
        }
        self.timers.set(Timer::SampleMemory, now + SAMPLE_EVERY);
        let ready: Vec<(WorkerId, u32)> = self
            .current_workers()
            .filter(|(_, w)| w.phase == Phase::Ready)
            .map(|(id, w)| (id, w.pid))
            .collect();
        if !ready.is_empty() {
            self.actions.push_back(Action::SampleMemory(ready));
        }
    }

    /// Shared sockets: asks the driver to look at them (a worker may have broken one).
    fn check_listeners(&mut self, now: Instant) {
        if !self.running {
            return;
        }
        self.timers
            .set(Timer::CheckListeners, now + CHECK_LISTENERS_EVERY);
        // Program mode, one shared socket: a program that binds its own port shows as a
        // queue nobody empties (reuseport watches each slot's queue itself).
        let queues = self.config.program_mode()
            && !self.config.balance.traits().socket_per_slot
            && self.current_workers().any(|(_, w)| w.phase == Phase::Ready);
        self.actions.push_back(Action::CheckListeners { queues });
    }

    /// Each slot's current worker, if it has one.
    fn current_workers(&self) -> impl Iterator<Item = (WorkerId, &Worker)> {
        self.slots
            .iter()
            .filter_map(|(_, s)| s.current)
            .filter_map(|id| self.workers.get(&id).map(|w| (id, w)))
    }
}
