//! The one task that owns every worker process: it feeds the [`Supervisor`] its inputs
//! with `now`, applies the actions it returns, and sleeps until the core's next timer.
//!
//! The driver decides nothing: it measures (memory, accept queues, the shared sockets) when
//! the core asks, reports what it saw, and acts. It reads the clock once per turn and keeps
//! no timer of its own. Nothing else spawns, stops or kills a worker. The round-robin
//! hand-off does not pass through here (the balancer's accept threads hand connections
//! straight to workers), so the driver adds no hop to the request path.
//!
//! * `process.rs`: spawning a worker and the tasks that read what it sends; `command.rs`:
//!   what every worker's command gets (no inherited activation, a process group).
//! * `program.rs`: the command of a program given listeners (`LISTEN_FDS`).
//! * `notify.rs`: the `NOTIFY_SOCKET` such programs report to.
//! * `output.rs`, `logs.rs`: workers' output and log records in the watcher's log.
//! * `stop.rs`: asking a worker to stop (its signal, or a drain request).
//! * `listeners.rs`: the shared listening sockets kept healthy.
//! * `measure.rs`: memory and CPU from `/proc`, and the balancing figures of a status.
//! * `observe.rs`: whether a starting program waits on its listener (readiness observed).

mod balancing;
mod command;
mod containment;
pub(crate) mod datagrams;
mod forwarding;
mod hand_backs;
mod listeners;
mod logs;
mod measure;
mod observe;
mod output;
mod process;
mod program;
mod stop;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

pub use self::output::read_lines;
pub(crate) use self::program::prepare_program_mode;

use self::containment::Containment;
use self::forwarding::Input;
use self::logs::EventLog;
use self::process::{Process, kill_group, kill_leftovers, spawn_worker};
use crate::balance::{SteerBy, Steering, queued_by_slot};
use crate::core::{Action, Outcome, Supervisor, TICK, Ticket};
use crate::shared::{Published, Shared};
use crate::{ClusterStatus, WorkerId};

/// Worker inputs waiting for the driver; a worker that sends faster waits (its own socket
/// fills), never the watcher's memory.
const INPUT_QUEUE: usize = 1024;
/// What the handle (and the control socket, through it) asks of the driver.
#[derive(Debug)]
pub(crate) enum Command {
    Start(usize, oneshot::Sender<Outcome>),
    AddWorker(oneshot::Sender<Outcome>),
    RemoveWorker(oneshot::Sender<Outcome>),
    Scale(usize, oneshot::Sender<Outcome>),
    Restart(oneshot::Sender<Outcome>),
    /// Run this configuration with this many workers; `changed` names what differs.
    Reload {
        config: Arc<crate::WatcherConfig>,
        workers: usize,
        changed: Vec<String>,
        reply: oneshot::Sender<Outcome>,
    },
    Stop(oneshot::Sender<Outcome>),
    /// A snapshot; with `measure`, memory and CPU of each worker's process tree too.
    Status {
        measure: bool,
        reply: oneshot::Sender<ClusterStatus>,
    },
    /// A successor watcher took the sockets over.
    HandedOver,
}

/// One turn of the loop: what woke it.
enum Turn {
    Input(Input),
    Command(Option<Command>),
    Reaped,
    Timeout,
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
    /// Program mode: each worker's last `STATUS=` text.
    statuses: HashMap<WorkerId, String>,
    /// How every process a worker starts is found and ended.
    containment: Containment,
    /// Program mode: accept queues that keep growing (a program that binds its own port).
    queue_watch: listeners::QueueWatch,
    /// Reuseport: the programs attached to the slots' groups, and the slots last steered to.
    steering: Steering,
    live: std::collections::BTreeSet<u32>,
    /// The log lines of events.
    event_log: EventLog,
    /// This turn's time: read once when the turn begins.
    now: Instant,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("processes", &self.processes.len())
            .finish_non_exhaustive()
    }
}

impl Driver {
    pub(crate) fn new(shared: Arc<Shared>, commands: mpsc::UnboundedReceiver<Command>) -> Self {
        let (inputs_tx, inputs) = mpsc::channel(INPUT_QUEUE);
        let config = shared.config();
        let by_source =
            config.balance == crate::Balance::Reuseport && config.sticky_key().is_some();
        let steer_by = SteerBy::new(by_source, &config.cpus);
        Self {
            core: Supervisor::new(shared.config()),
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
            statuses: HashMap::new(),
            containment: Containment::detect(),
            queue_watch: listeners::QueueWatch::default(),
            steering: Steering::new(steer_by),
            live: std::collections::BTreeSet::new(),
            event_log: EventLog::default(),
            now: Instant::now(),
        }
    }

    /// Runs until the handle is gone and every worker has exited.
    pub(crate) async fn run(mut self) {
        loop {
            self.apply_actions();
            if self.handle_gone && self.core.is_idle() {
                break;
            }
            let wake = self.core.poll_timeout().unwrap_or(self.now + TICK);
            let turn = tokio::select! {
                // Inputs first: after a stall, what workers sent is read before any timer.
                biased;
                Some(input) = self.inputs.recv() => Turn::Input(input),
                command = self.commands.recv(), if !self.handle_gone => Turn::Command(command),
                // Reap finished watch tasks so the set does not grow.
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => Turn::Reaped,
                () = tokio::time::sleep_until(wake.into()) => Turn::Timeout,
            };
            self.now = Instant::now();
            match turn {
                Turn::Input(input) => self.handle_input(input),
                Turn::Command(Some(command)) => self.handle_command(command),
                Turn::Command(None) => {
                    // The handle was dropped: stop gracefully, then end.
                    self.handle_gone = true;
                    self.stopping = true;
                    self.core.stop(None, self.now);
                }
                Turn::Reaped => {}
                Turn::Timeout => self.core.handle_timeout(self.now),
            }
        }
        self.shared.balancer.shutdown();
    }

    fn ticket(&mut self, reply: oneshot::Sender<Outcome>) -> Ticket {
        self.next_ticket += 1;
        self.waiters.insert(self.next_ticket, reply);
        self.next_ticket
    }

    fn handle_command(&mut self, command: Command) {
        let now = self.now;
        match command {
            Command::Start(count, reply) => {
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
            Command::Reload {
                config,
                workers,
                changed,
                reply,
            } => {
                let ticket = self.ticket(reply);
                self.core.reload(ticket, config, workers, changed, now);
            }
            Command::Stop(reply) => {
                self.stopping = true;
                let ticket = self.ticket(reply);
                self.core.stop(Some(ticket), now);
            }
            Command::Status { measure, reply } => {
                let mut status = self.core.status(now);
                measure::add_balancing(&mut status, &self.shared);
                if measure {
                    measure::add_usage(&mut status);
                }
                let _ = reply.send(status);
            }
            Command::HandedOver => self.core.handed_over(now),
        }
    }

    fn handle_input(&mut self, input: Input) {
        let now = self.now;
        match input {
            Input::Ready(id) => self.core.ready(id, now),
            Input::Heartbeat(id, latest) => {
                latest.take();
                self.core.heartbeat(id, now);
            }
            Input::Accepted(id, latest) => self.core.accepted(id, latest.take(), now),
            Input::Open(id, latest) => self.core.open(id, latest.take(), now),
            Input::Requests(id, latest) => self.core.requests(id, latest.take()),
            Input::StopRequested(id) => self.core.stop_requested(id, now),
            Input::BadTraffic(id) => self.core.bad_traffic(id, now),
            Input::ControlClosed(id) => self.core.control_closed(id, now),
            Input::Notify(id, notification) => self.notified(id, notification),
            Input::MainExited(id) => {
                self.shared.balancer.remove(id);
                self.core.main_exited(id, now);
            }
            Input::Exited(id, status) => {
                self.statuses.remove(&id);
                self.shared.listens().remove(&id);
                // What it counted (its last report, sent after its last request when it
                // drained) stays in the merged application metrics. Its port first: a read
                // still on its way is dropped rather than counted twice.
                self.shared.app_metrics.ports.forget(id);
                self.shared.app_metrics.store.lock().retire(id);
                if let Some(process) = self.processes.remove(&id) {
                    // Whatever it started goes with it: its process group, and daemons that
                    // left it (its cgroup, or its mark).
                    kill_leftovers(process.pid);
                    self.containment.end(id);
                    self.shared.balancer.forget(id);
                    self.shared.datagrams.exited(id);
                    if let Some(link) = process.link
                        && let Some(worker_end) = link.worker_end
                    {
                        self.shared.balancer.reclaim(&link.clients, worker_end);
                    }
                }
                self.core.exited(id, status, now);
            }
        }
    }

    /// Program mode: an sd_notify datagram on `id`'s socket.
    fn notified(&mut self, id: WorkerId, notification: crate::notify::Notification) {
        let now = self.now;
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

    fn apply_actions(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Configure(config) => self.shared.set_config(config),
                Action::Observe { id, pid } => {
                    let listeners = observe::listener_inodes(&self.shared);
                    let observation = observe::look(pid, &listeners);
                    self.core.observed(id, observation, self.now);
                }
                Action::Spawn(id) => self.spawn(id),
                Action::Admit(id) => {
                    self.shared.balancer.set_ready(id);
                    self.shared.datagrams.admit(id);
                }
                Action::Stop { id, spread } => {
                    self.shared.datagrams.retire(id);
                    self.stop(id, spread);
                }
                Action::Kill { pid, .. } => kill_group(pid),
                Action::Emit(event) => {
                    let log = &mut self.event_log;
                    self.shared.span.in_scope(|| log.log(&event));
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
                Action::SampleMemory(workers) => self.sample_memory(&workers),
                Action::CheckListeners { queues } => self.check_listeners(queues),
                Action::PollQueues => {
                    let queued = queued_by_slot(&self.shared.provider);
                    self.core.queues(&queued, self.now);
                }
                Action::Steer(live) => {
                    self.steering.update(&self.shared.provider, &live);
                    self.live = live;
                }
                Action::ReleaseSlot(slot) => {
                    self.shared.datagrams.release_slot(slot);
                    if !self.shared.provider.release_slot(slot).is_empty() {
                        tracing::debug!(slot, "the slot's listening sockets were closed");
                    }
                    self.steering.update(&self.shared.provider, &self.live);
                }
                Action::ReleaseUnusedListeners(current) => {
                    listeners::release_unused(&self.shared, &current);
                }
                Action::Weights(weights) => self.weigh(&weights),
                Action::Rebalance { wants, asks } => self.rebalance(wants, &asks),
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
        let now = self.now;
        let messages = self.shared.message_sink();
        let spawned = spawn_worker(
            &self.shared,
            id,
            &self.inputs_tx,
            messages,
            &mut self.tasks,
            &self.containment,
        );
        match spawned {
            Ok(process) => {
                let pid = process.pid;
                self.processes.insert(id, process);
                self.core.spawned(id, pid, now);
            }
            Err(error) => {
                // A datagram member it may have been given is free again.
                self.shared.datagrams.exited(id);
                let message = format!(
                    "cannot run {}: {error}",
                    self.shared.config().program.display()
                );
                self.core
                    .spawn_failed(id, error.raw_os_error(), message, now);
            }
        }
    }

    /// `max_memory`: the RSS of each named worker's process tree, reported to the core.
    fn sample_memory(&mut self, workers: &[(WorkerId, u32)]) {
        let table = measure::ProcessTable::read();
        for &(id, pid) in workers {
            let (rss, _) = table.tree_usage(pid);
            self.core.memory(id, rss, self.now);
        }
    }

    /// Shared sockets: restores what a worker broke; a socket bound anew is reported (the
    /// core restarts the workers onto it).
    fn check_listeners(&mut self, queues: bool) {
        if queues {
            self.queue_watch.check(&self.shared.provider);
        }
        // Programs get their listeners blocking; the watcher's own accept threads (the
        // hand-off modes, where no worker holds a copy) keep theirs blocking too.
        let nonblocking = !self.shared.config().program_mode() && !self.shared.balancer.accepts();
        if listeners::check(&self.shared.provider, nonblocking) {
            self.core.listener_rebound(self.now);
        }
    }

    fn publish(&mut self) {
        let mut published = Published::default();
        for (info, current) in self.core.live_workers() {
            let link = self.processes.get(&info.id).and_then(|p| p.link.as_ref());
            if let Some(link) = link {
                if current {
                    published.current.insert(info.id.slot, link.control.clone());
                }
                published.controls.push(link.control.clone());
            }
            published.workers.push(info);
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
