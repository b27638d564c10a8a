//! The one task that owns every worker process: it feeds the [`Supervisor`] its inputs
//! with `now`, applies the actions it returns, and sleeps until the next deadline.
//!
//! Nothing else spawns, stops or kills a worker. The round-robin hand-off does not pass
//! through here (the balancer's accept loops hand connections straight to workers), so the
//! driver adds no hop to the request path.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use cluster_ipc::protocol::{Balance, WatcherToWorker};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::WorkerInfo;
use crate::balancer::Balancer;
use crate::core::{Action, Outcome, Supervisor, TICK, Ticket};
use crate::listeners;
use crate::logs::log_event;
use crate::process::{Input, MessageSink, Process, kill_group, kill_leftovers, spawn_worker};
use crate::shared::{Published, Shared};
use crate::status::ClusterStatus;
use crate::{Event, WorkerId};

/// Worker inputs waiting for the driver; a worker that sends faster waits (its own socket
/// fills), never the watcher's memory.
const INPUT_QUEUE: usize = 1024;

/// Messages waiting for `messages()`, by count and by payload bytes.
pub(crate) const MESSAGE_QUEUE: usize = 1024;
pub(crate) const MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// How long the stop request to one worker may take to be written.
const STOP_SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// What the handle asks of the driver.
#[derive(Debug)]
pub(crate) enum Command {
    Start(usize, oneshot::Sender<Outcome>),
    AddWorker(oneshot::Sender<Outcome>),
    RemoveWorker(oneshot::Sender<Outcome>),
    Scale(usize, oneshot::Sender<Outcome>),
    Restart(oneshot::Sender<Outcome>),
    Stop(oneshot::Sender<Outcome>),
    Status(oneshot::Sender<ClusterStatus>),
}

pub(crate) struct Driver {
    shared: Arc<Shared>,
    core: Supervisor,
    commands: mpsc::UnboundedReceiver<Command>,
    handle_gone: bool,
    inputs_tx: mpsc::Sender<Input>,
    inputs: mpsc::Receiver<Input>,
    processes: HashMap<WorkerId, Process>,
    /// Each worker's watch task; dropping the driver aborts them (and `kill_on_drop`).
    tasks: JoinSet<()>,
    waiters: HashMap<Ticket, oneshot::Sender<Outcome>>,
    next_ticket: Ticket,
    /// Set by a stop: once idle, the message stream ends.
    stopping: bool,
    /// When the shared listening sockets are checked next.
    next_listener_check: Instant,
    /// Program mode: each worker's last `STATUS=` text.
    statuses: HashMap<WorkerId, String>,
    /// Program mode: whether the notify socket's reader runs.
    notify_reader: bool,
    /// Program mode: accept queues that keep growing (a program that binds its own port).
    queue_watch: listeners::QueueWatch,
    /// When the workers' memory is sampled next (`max_memory`).
    next_memory_check: Instant,
    /// Reuseport: steering, drains before stops, stalled slots.
    slots: crate::slots::Slots,
    /// When the reuseport queues are looked at next.
    next_slot_poll: Instant,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("processes", &self.processes.len())
            .finish_non_exhaustive()
    }
}

/// Spawns a task of the watcher, inside `span` so its log lines carry the embedding
/// program's context (the `cluster` binary's `--name`, say).
pub(crate) fn spawn_in<F>(span: tracing::Span, task: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(task.instrument(span))
}

impl Driver {
    pub(crate) fn new(shared: Arc<Shared>, commands: mpsc::UnboundedReceiver<Command>) -> Self {
        let (inputs_tx, inputs) = mpsc::channel(INPUT_QUEUE);
        Self {
            core: Supervisor::new(shared.config.clone()),
            shared,
            commands,
            handle_gone: false,
            inputs_tx,
            inputs,
            processes: HashMap::new(),
            tasks: JoinSet::new(),
            waiters: HashMap::new(),
            next_ticket: 0,
            stopping: false,
            next_listener_check: Instant::now() + listeners::CHECK_EVERY,
            statuses: HashMap::new(),
            notify_reader: false,
            queue_watch: listeners::QueueWatch::default(),
            next_memory_check: Instant::now(),
            slots: crate::slots::Slots::default(),
            next_slot_poll: Instant::now(),
        }
    }

    /// Runs until the handle is gone and every worker has exited.
    pub(crate) async fn run(mut self) {
        loop {
            self.apply_actions();
            if self.handle_gone && self.core.is_idle() {
                break;
            }
            let now = Instant::now();
            let tick = if self.reuseport() {
                crate::slots::POLL
            } else {
                TICK
            };
            let wake = self
                .core
                .next_deadline()
                .map_or(now + tick, |d| d.min(now + tick));
            tokio::select! {
                // Inputs first: after a stall, what workers sent is read before any timer.
                biased;
                Some(input) = self.inputs.recv() => self.handle_input(input),
                command = self.commands.recv(), if !self.handle_gone => match command {
                    Some(command) => self.handle_command(command),
                    None => {
                        // The handle was dropped: stop gracefully, then end.
                        self.handle_gone = true;
                        self.stopping = true;
                        self.core.stop(None, Instant::now());
                    }
                },
                // Reap finished watch tasks so the set does not grow.
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
                () = tokio::time::sleep_until(wake.into()) => self.core.handle_timeout(Instant::now()),
            }
            self.check_listeners();
            self.poll_slots();
        }
        self.shared.balancer.shutdown();
    }

    /// Every second with `max_memory`: the RSS of each ready worker's process tree; over the
    /// limit (plus a tenth at most, different per worker) it is recycled, over 1.5 times the
    /// limit it is killed.
    fn check_memory(&mut self) {
        let Some(limit) = self.shared.config.max_memory else {
            return;
        };
        let now = Instant::now();
        if now < self.next_memory_check {
            return;
        }
        self.next_memory_check = now + Duration::from_secs(1);
        let status = self.core.status(now);
        for verdict in crate::samples::memory_verdicts(limit, &status) {
            match verdict {
                crate::samples::MemoryVerdict::Ceiling(id) => self.core.over_ceiling(id, now),
                crate::samples::MemoryVerdict::Recycle(id, why) => {
                    self.core.recycle(id, why, now);
                }
            }
        }
    }

    fn check_listeners(&mut self) {
        self.check_memory();
        let now = Instant::now();
        if now < self.next_listener_check || self.shared.config.balance.hands_off() {
            return;
        }
        self.next_listener_check = now + listeners::CHECK_EVERY;
        // Reuseport watches its slots' queues itself, more closely (`slots.rs`).
        if self.shared.config.program_mode()
            && self.shared.config.balance == Balance::Shared
            && self.core.status(now).ready_workers() > 0
        {
            self.queue_watch.check(&self.shared.provider);
        }
        if listeners::check(&self.shared.provider) && self.core.is_running() {
            // Nobody waits on this restart: its ticket has no waiter.
            self.next_ticket += 1;
            self.core.restart(self.next_ticket, now);
        }
    }

    /// Program mode: reads the notify socket into the driver's inputs (once).
    fn start_notify_reader(&mut self) {
        if self.notify_reader || self.shared.notify.get().is_none() {
            return;
        }
        self.notify_reader = true;
        let shared = self.shared.clone();
        let inputs = self.inputs_tx.clone();
        self.tasks.spawn(
            async move {
                let Some(socket) = shared.notify.get() else {
                    return;
                };
                while let Ok(notification) = socket.recv().await {
                    if inputs.send(Input::Notify(notification)).await.is_err() {
                        return;
                    }
                }
            }
            .instrument(self.shared.span.clone()),
        );
    }

    fn ticket(&mut self, reply: oneshot::Sender<Outcome>) -> Ticket {
        self.next_ticket += 1;
        self.waiters.insert(self.next_ticket, reply);
        self.next_ticket
    }

    fn handle_command(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Start(count, reply) => {
                self.start_notify_reader();
                if !self.core.is_running() {
                    self.stopping = false;
                    self.shared.balancer.reopen();
                    self.shared.open_messages();
                }
                let ticket = self.ticket(reply);
                self.core.start(ticket, count, now);
            }
            Command::AddWorker(reply) => {
                let ticket = self.ticket(reply);
                self.core.add_worker(ticket, now);
            }
            Command::RemoveWorker(reply) => {
                let ticket = self.ticket(reply);
                self.core.remove_worker(ticket, now);
            }
            Command::Scale(count, reply) => {
                let ticket = self.ticket(reply);
                self.core.scale(ticket, count, now);
            }
            Command::Restart(reply) => {
                let ticket = self.ticket(reply);
                self.core.restart(ticket, now);
            }
            Command::Stop(reply) => {
                self.stopping = true;
                let ticket = self.ticket(reply);
                self.core.stop(Some(ticket), now);
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status(now));
            }
        }
    }

    fn handle_input(&mut self, input: Input) {
        let now = Instant::now();
        match input {
            Input::Ready(id) => self.core.ready(id, now),
            Input::Heartbeat(id) => self.core.heartbeat(id, now),
            Input::Accepted(id, total) => {
                self.core.accepted(id, total, now);
                if let Some(limit) = self.shared.config.max_requests {
                    let spread = crate::core::jitter(id, Duration::from_nanos(limit / 10));
                    let own_limit = limit + spread.as_nanos() as u64;
                    if total >= own_limit {
                        let why = crate::core::Recycle::Requests {
                            count: total,
                            limit: own_limit,
                        };
                        self.core.recycle(id, why, now);
                    }
                }
            }
            Input::StopRequested(id) => self.core.stop_requested(id, now),
            Input::BadTraffic(id) => self.core.bad_traffic(id, now),
            Input::ControlClosed(id) => self.core.control_closed(id, now),
            Input::Notify(notification) => {
                let Some(id) = self
                    .processes
                    .iter()
                    .find(|(_, p)| p.pid == notification.group)
                    .map(|(id, _)| *id)
                else {
                    return;
                };
                if notification.ready {
                    self.core.ready(id, now);
                }
                if notification.watchdog {
                    self.core.heartbeat(id, now);
                }
                if let Some(status) = notification.status {
                    tracing::debug!(worker = id.slot, status, "worker status");
                    self.statuses.insert(id, status);
                }
                if notification.stopping {
                    tracing::debug!(worker = id.slot, "worker says it is stopping");
                }
            }
            Input::Exited(id, status) => {
                self.statuses.remove(&id);
                self.shared.listens().remove(&id);
                if let Some(process) = self.processes.remove(&id) {
                    // Children it forked go with it.
                    kill_leftovers(process.pid);
                    self.shared.balancer.forget(id);
                    if let Some(link) = process.link
                        && let Some(worker_end) = link.worker_end
                    {
                        self.shared.balancer.reclaim(&link.clients, worker_end);
                    }
                }
                self.slots.exited(id);
                self.core.exited(id, status, now);
                self.release_slot_if_gone(id.slot);
            }
        }
    }

    fn apply_actions(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Spawn(id) => self.spawn(id),
                Action::Admit(id) => self.shared.balancer.set_ready(id),
                Action::Stop(id) => self.stop(id),
                Action::Kill { pid, .. } => kill_group(pid),
                Action::Emit(event) => {
                    self.shared.span.in_scope(|| log_event(&event));
                    if matches!(event, Event::RestartFinished { .. }) {
                        self.release_unused_listeners();
                    }
                    let _ = self.shared.events.send(event);
                }
                Action::Complete(ticket, outcome) => {
                    // A caller woken by this sees the workers as they are now.
                    if self.core.take_changed() {
                        self.publish();
                    }
                    if let Some(waiter) = self.waiters.remove(&ticket) {
                        let _ = waiter.send(outcome);
                    }
                }
            }
        }
        if self.core.take_changed() {
            self.publish();
        }
        if self.stopping && self.core.is_idle() {
            // Stopped: the message stream ends once every reader is gone.
            self.shared.close_messages();
        }
    }

    fn spawn(&mut self, id: WorkerId) {
        let now = Instant::now();
        let messages = self.shared.message_sink();
        match spawn_worker(&self.shared, id, &self.inputs_tx, messages, &mut self.tasks) {
            Ok(process) => {
                let pid = process.pid;
                self.processes.insert(id, process);
                self.core.spawned(id, pid, now);
            }
            Err(error) => {
                let message = format!(
                    "cannot run {}: {error}",
                    self.shared.config.program.display()
                );
                self.core
                    .spawn_failed(id, error.raw_os_error(), message, now);
            }
        }
    }

    /// No new connections for the worker; the stop request goes out without holding up the
    /// driver (a worker that does not read its control socket cannot block it). Reuseport:
    /// its slot is drained first (see `slots.rs`).
    fn stop(&mut self, id: WorkerId) {
        if self.reuseport() {
            let now = Instant::now();
            let status = self.core.status(now);
            if self
                .slots
                .drain_first(id, &status, &self.shared.provider, now)
            {
                return;
            }
        }
        self.stop_now(id);
    }

    /// The core's status, with what only the driver knows: the slots' accept queues
    /// (reuseport) and the workers' open connections (least-conn).
    fn status(&self, now: Instant) -> ClusterStatus {
        let mut status = self.core.status(now);
        crate::samples::add_balancing(&mut status, &self.shared);
        status
    }

    /// Reuseport, and this watcher steers its sockets (no successor took over).
    fn reuseport(&self) -> bool {
        self.shared.config.balance == Balance::Reuseport
            && !self
                .shared
                .handed_over
                .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Reuseport: every [`POLL`](crate::slots::POLL), the drains that are done and the
    /// slots that stalled or recovered.
    fn poll_slots(&mut self) {
        let now = Instant::now();
        if !self.reuseport() || now < self.next_slot_poll {
            return;
        }
        self.next_slot_poll = now + crate::slots::POLL;
        let status = self.core.status(now);
        if !self.slots.busy(&status) {
            return;
        }
        for id in self.slots.poll(&status, &self.shared.provider, now) {
            self.stop_now(id);
        }
    }

    /// Reuseport: steers new connections onto the slots that can take them now.
    fn steer(&mut self) {
        if !self.reuseport() {
            return;
        }
        let status = self.core.status(Instant::now());
        self.slots.steer(&status, &self.shared.provider);
    }

    /// Reuseport: a slot scaled away whose last process is gone gives up its sockets.
    fn release_slot_if_gone(&mut self, slot: u32) {
        if !self.reuseport() {
            return;
        }
        let status = self.core.status(Instant::now());
        let gone = status
            .slots
            .iter()
            .find(|s| s.slot == slot)
            .is_none_or(|s| !s.wanted && s.workers.is_empty());
        if gone && !self.processes.keys().any(|id| id.slot == slot) {
            let released = self.shared.provider.release_slot(slot);
            if !released.is_empty() {
                tracing::debug!(slot, "the slot's listening sockets were closed");
            }
            self.steer();
        }
    }

    fn stop_now(&mut self, id: WorkerId) {
        let Some(process) = self.processes.get(&id) else {
            return;
        };
        self.shared.balancer.remove(id);
        let Some(link) = &process.link else {
            // A program that does not link cluster-worker: the stop signal, to its group.
            if let Some(group) = rustix::process::Pid::from_raw(process.pid as i32) {
                let signal =
                    rustix::process::Signal::from_named_raw(self.shared.config.stop_signal)
                        .unwrap_or(rustix::process::Signal::TERM);
                let _ = rustix::process::kill_process_group(group, signal);
            }
            return;
        };
        Balancer::close_pipe(&link.clients);
        let control = link.control.clone();
        spawn_in(self.shared.span.clone(), async move {
            let _ =
                tokio::time::timeout(STOP_SEND_TIMEOUT, control.send(&WatcherToWorker::Stop)).await;
        });
    }

    /// After a rolling restart, a listening socket that no current worker asked for (the
    /// new generation listens elsewhere) is closed, so clients are refused instead of
    /// waiting on a socket nobody will ever accept on.
    fn release_unused_listeners(&self) {
        let status = self.core.status(Instant::now());
        let current: Vec<WorkerId> = status
            .slots
            .iter()
            .flat_map(|s| s.workers.iter())
            .filter(|w| w.current)
            .map(|w| w.id)
            .collect();
        listeners::release_unused(&self.shared, &current);
    }

    fn publish(&mut self) {
        self.steer();
        let status = self.core.status(Instant::now());
        let mut published = Published::default();
        for slot in &status.slots {
            for worker in &slot.workers {
                published.workers.push(WorkerInfo {
                    id: worker.id,
                    pid: worker.pid,
                    ready: worker.phase == crate::WorkerPhase::Ready,
                    stopping: matches!(
                        worker.phase,
                        crate::WorkerPhase::Stopping | crate::WorkerPhase::Killed
                    ),
                });
                let link = self.processes.get(&worker.id).and_then(|p| p.link.as_ref());
                if let Some(link) = link {
                    if worker.current {
                        published
                            .current
                            .insert(worker.id.slot, link.control.clone());
                    }
                    published.controls.push(link.control.clone());
                }
            }
        }
        *self.shared.published() = published;
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The runtime is going away with workers still alive (or the task was aborted):
        // there is no time for a graceful stop, so nothing may outlive the watcher.
        for process in self.processes.values() {
            kill_group(process.pid);
        }
    }
}

/// A fresh message queue for `messages()`, counting what it drops in `dropped`.
pub(crate) fn message_queue(
    dropped: Arc<AtomicU64>,
) -> (MessageSink, mpsc::Receiver<crate::WorkerMessage>) {
    let (queue, receiver) = mpsc::channel(MESSAGE_QUEUE);
    (
        MessageSink {
            queue,
            budget: Arc::new(Semaphore::new(MESSAGE_BYTES)),
            dropped,
        },
        receiver,
    )
}
