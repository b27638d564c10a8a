//! [`ClusterWatcher`]: spawning, watching, respawning, stopping and restarting workers.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use cluster_ipc::protocol::{
    Balance, ClientMeta, ENV_BALANCE, ENV_HEARTBEAT_MS, ENV_WORKER_FDS, ENV_WORKER_GENERATION,
    ENV_WORKER_ID, LogRecord, WatcherToWorker, WorkerToWatcher,
};
use cluster_ipc::{
    Channel, ChannelReceiver, ChannelSender, ClientSocketSendPipe, ServerSocketProvider,
};
use fdpass::{AsyncFdSocket, FdSocket};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, mpsc, watch};

use crate::balancer::{Balancer, ClientPipe, bound_handoff_queue};
use crate::{
    Event, ExitKind, KillReason, SendError, StartError, StopCause, WatcherConfig, WorkerExit,
    WorkerId,
};

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Starting,
    Ready,
    Exited(WorkerExit),
}

#[derive(Debug)]
struct WorkerHandle {
    pid: u32,
    control: ChannelSender<WatcherToWorker>,
    status: watch::Receiver<Status>,
    stopping: Option<StopCause>,
    killed: Option<KillReason>,
    clients: ClientPipe,
}

#[derive(Debug, Default)]
struct Slot {
    wanted: bool,
    current: Option<WorkerId>,
    generation: u32,
    backoff: Duration,
}

#[derive(Debug, Default)]
struct State {
    running: bool,
    slots: Vec<Slot>,
    workers: HashMap<WorkerId, WorkerHandle>,
}

#[derive(Debug)]
struct Shared {
    config: WatcherConfig,
    state: Mutex<State>,
    events: broadcast::Sender<Event>,
    messages: Mutex<Option<mpsc::UnboundedSender<WorkerMessage>>>,
    provider: ServerSocketProvider,
    balancer: Arc<Balancer>,
    /// The span current when the watcher was created; every task of the watcher runs in it.
    span: tracing::Span,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn emit(&self, event: Event) {
        // Emitted from the caller's task too (`start`, `stop`): log in the watcher's span.
        self.span.in_scope(|| log_event(&event));
        let _ = self.events.send(event);
    }
}

/// A message from a worker, with a handle to answer that worker only.
#[derive(Debug)]
pub struct WorkerMessage {
    /// Who sent it.
    pub id: WorkerId,
    /// Its pid.
    pub pid: u32,
    /// The postcard-encoded payload; see [`decode`](Self::decode).
    pub payload: Vec<u8>,
    reply: ChannelSender<WatcherToWorker>,
}

impl WorkerMessage {
    /// Decodes the payload as `T` (the type the worker sent).
    ///
    /// # Errors
    /// When the payload is not a `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, postcard::Error> {
        postcard::from_bytes(&self.payload)
    }

    /// Answers the sender (and only it).
    ///
    /// # Errors
    /// When the worker is gone.
    pub async fn reply<T: Serialize>(&self, message: &T) -> Result<(), SendError> {
        let bytes = postcard::to_stdvec(message).map_err(SendError::Encode)?;
        Ok(self.reply.send(&WatcherToWorker::Message(bytes)).await?)
    }
}

/// A snapshot of one live worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerInfo {
    /// Which worker.
    pub id: WorkerId,
    /// Its pid.
    pub pid: u32,
    /// Whether it reported ready.
    pub ready: bool,
    /// Whether it is being stopped.
    pub stopping: bool,
}

/// Supervises a cluster of worker processes running one program.
///
/// Embeddable in any tokio program; the `cluster` binary is a thin shell around it. Workers
/// are spawned with their four sockets inherited (no socket on the filesystem), their slot
/// and generation in the environment, and in a process group of their own (so a terminal's
/// Ctrl-C reaches only the watcher, which then stops them gracefully). Listening sockets are
/// owned here for the watcher's whole life, so restarts never refuse a connection.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use cluster_watcher::{ClusterWatcher, WatcherConfig};
/// let watcher = ClusterWatcher::new(WatcherConfig::new("./my-server").arg("127.0.0.1:8080"));
/// watcher.start(4).await?;           // returns once all four are ready
/// watcher.restart().await?;          // rolling, readiness-gated
/// for exit in watcher.stop().await { // graceful, then SIGKILL at the timeout
///     println!("worker {} ended: {}", exit.id, exit.status);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ClusterWatcher {
    shared: Arc<Shared>,
}

impl ClusterWatcher {
    /// A watcher for `config`; nothing runs until [`start`](Self::start).
    ///
    /// The tracing span current here is the one every task of the watcher logs in, so
    /// creating the watcher inside a span (`span.in_scope(|| ClusterWatcher::new(config))`)
    /// tags all of its lines, including the workers' forwarded logs.
    pub fn new(config: WatcherConfig) -> Self {
        let (events, _) = broadcast::channel(1024);
        let span = tracing::Span::current();
        Self {
            shared: Arc::new(Shared {
                config,
                state: Mutex::new(State::default()),
                events,
                messages: Mutex::new(None),
                provider: ServerSocketProvider::new(),
                balancer: Arc::new(Balancer::new(span.clone())),
                span,
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &WatcherConfig {
        &self.shared.config
    }

    /// The provider that owns the cluster's listening sockets: bind here ahead of time to
    /// fail early on a busy port, or to inspect what workers listen on.
    pub fn server_sockets(&self) -> &ServerSocketProvider {
        &self.shared.provider
    }

    /// Worker events from now on. A subscriber that falls more than 1,024 events behind
    /// misses the oldest.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// The stream of worker messages; `None` if already taken. Messages that arrive while
    /// nobody holds the stream are dropped.
    pub fn messages(&self) -> Option<mpsc::UnboundedReceiver<WorkerMessage>> {
        let mut slot = self
            .shared
            .messages
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if slot.is_some() {
            return None;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        *slot = Some(tx);
        Some(rx)
    }

    /// Starts `workers` workers and returns once all are ready.
    ///
    /// # Errors
    /// [`StartError`] naming the worker that failed and why; every worker started by this
    /// call is stopped again.
    pub async fn start(&self, workers: usize) -> Result<(), StartError> {
        if workers == 0 {
            return Err(StartError::ZeroWorkers);
        }
        {
            let mut state = self.shared.state();
            if state.running {
                return Err(StartError::AlreadyStarted);
            }
            state.running = true;
            self.shared.balancer.reopen();
            state.slots = (0..workers)
                .map(|_| Slot {
                    wanted: true,
                    ..Slot::default()
                })
                .collect();
        }
        let mut ids = Vec::new();
        for slot in 1..=workers as u32 {
            match spawn(&self.shared, slot, true) {
                Ok(id) => ids.push(id),
                Err(e) => {
                    self.stop().await;
                    return Err(e);
                }
            }
        }
        for id in ids {
            if let Err(e) = wait_ready(&self.shared, id).await {
                self.stop().await;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Adds one worker (a new slot) and waits until it is ready.
    ///
    /// # Errors
    /// [`StartError`] if it fails to start.
    pub async fn add_worker(&self) -> Result<WorkerId, StartError> {
        let slot = {
            let mut state = self.shared.state();
            if !state.running {
                return Err(StartError::NotRunning);
            }
            state.slots.push(Slot {
                wanted: true,
                ..Slot::default()
            });
            state.slots.len() as u32
        };
        let spawned = spawn(&self.shared, slot, true)?;
        wait_ready(&self.shared, spawned).await
    }

    /// Stops the worker in the highest slot gracefully; never the last one. Returns it.
    pub async fn remove_worker(&self) -> Option<WorkerExit> {
        let id = {
            let mut state = self.shared.state();
            let live = state.slots.iter().filter(|s| s.wanted).count();
            if !state.running || live <= 1 {
                return None;
            }
            let slot = state.slots.iter_mut().rev().find(|s| s.wanted)?;
            slot.wanted = false;
            slot.current.take()
        }?;
        stop_worker(&self.shared, id, StopCause::ScaledDown).await
    }

    /// Rolling restart, one slot at a time (see [`WatcherConfig::restart_parallelism`]): start
    /// the replacement, wait until it is ready, then stop the old worker gracefully. The
    /// listening sockets stay open throughout, so no connection is refused. A replacement
    /// that fails leaves the old worker serving; the first such failure is returned after
    /// every slot was tried.
    ///
    /// # Errors
    /// The first [`StartError`] of a replacement.
    pub async fn restart(&self) -> Result<(), StartError> {
        let slots: Vec<u32> = {
            let state = self.shared.state();
            if !state.running {
                return Err(StartError::NotRunning);
            }
            (1..=state.slots.len() as u32)
                .filter(|s| state.slots[*s as usize - 1].wanted)
                .collect()
        };
        let mut first_error = None;
        for chunk in slots.chunks(self.shared.config.restart_parallelism.max(1)) {
            let replacements = chunk.iter().map(|&slot| replace_slot(&self.shared, slot));
            for result in futures_join_all(replacements).await {
                if let Err(e) = result {
                    tracing::error!(error = %e, "rolling restart: replacement failed; the old worker keeps serving");
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Stops every worker: asks each to finish in-flight work, `SIGKILL`s those still running
    /// after the shutdown timeout, reaps them all, and says how each ended. No worker is
    /// respawned afterwards.
    pub async fn stop(&self) -> Vec<WorkerExit> {
        let ids: Vec<WorkerId> = {
            let mut state = self.shared.state();
            state.running = false;
            for slot in &mut state.slots {
                slot.wanted = false;
                slot.current = None;
            }
            state.workers.keys().copied().collect()
        };
        self.shared.balancer.shutdown();
        let stops = ids
            .into_iter()
            .map(|id| stop_worker(&self.shared, id, StopCause::Stop));
        let mut exits: Vec<WorkerExit> = futures_join_all(stops)
            .await
            .into_iter()
            .flatten()
            .collect();
        exits.sort_by_key(|e| (e.id.slot, e.id.generation));
        exits
    }

    /// The live workers.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        let state = self.shared.state();
        let mut workers: Vec<WorkerInfo> = state
            .workers
            .iter()
            .map(|(id, w)| WorkerInfo {
                id: *id,
                pid: w.pid,
                ready: *w.status.borrow() == Status::Ready,
                stopping: w.stopping.is_some(),
            })
            .collect();
        workers.sort_by_key(|w| (w.id.slot, w.id.generation));
        workers
    }

    /// Sends a message to the current worker of `slot`.
    ///
    /// # Errors
    /// [`SendError::NoSuchWorker`], or when the worker is gone.
    pub async fn send_to<T: Serialize>(&self, slot: u32, message: &T) -> Result<(), SendError> {
        let control = {
            let state = self.shared.state();
            let id = state
                .slots
                .get(slot as usize - 1)
                .and_then(|s| s.current)
                .ok_or(SendError::NoSuchWorker(slot))?;
            state
                .workers
                .get(&id)
                .ok_or(SendError::NoSuchWorker(slot))?
                .control
                .clone()
        };
        let bytes = postcard::to_stdvec(message).map_err(SendError::Encode)?;
        Ok(control.send(&WatcherToWorker::Message(bytes)).await?)
    }

    /// Sends a message to every live worker; returns how many received it.
    ///
    /// # Errors
    /// When the message cannot be encoded.
    pub async fn broadcast<T: Serialize>(&self, message: &T) -> Result<usize, SendError> {
        let bytes = postcard::to_stdvec(message).map_err(SendError::Encode)?;
        let controls: Vec<_> = self
            .shared
            .state()
            .workers
            .values()
            .map(|w| w.control.clone())
            .collect();
        let mut delivered = 0;
        for control in controls {
            if control
                .send(&WatcherToWorker::Message(bytes.clone()))
                .await
                .is_ok()
            {
                delivered += 1;
            }
        }
        Ok(delivered)
    }
}

impl Drop for ClusterWatcher {
    fn drop(&mut self) {
        // Children are killed by `kill_on_drop` as their tasks end; stop accepting now.
        self.shared.balancer.shutdown();
    }
}

/// Runs futures concurrently on this task and collects their outputs in order (they only
/// wait; the work happens in the workers' own tasks).
async fn futures_join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// A worker just spawned: enough to wait for it even if it is already gone again.
#[derive(Debug)]
struct Spawned {
    id: WorkerId,
    pid: u32,
    status: watch::Receiver<Status>,
}

async fn wait_ready(shared: &Shared, spawned: Spawned) -> Result<WorkerId, StartError> {
    let Spawned {
        id,
        pid,
        mut status,
    } = spawned;
    loop {
        match *status.borrow_and_update() {
            Status::Ready => return Ok(id),
            Status::Exited(exit) if exit.killed == Some(KillReason::ReadyTimeout) => {
                return Err(StartError::NotReady {
                    id,
                    pid,
                    timeout: shared.config.ready_timeout,
                });
            }
            Status::Exited(exit) => {
                return Err(StartError::ExitedBeforeReady {
                    id,
                    pid,
                    status: exit.status,
                });
            }
            Status::Starting => {}
        }
        if status.changed().await.is_err() {
            return Err(StartError::NotRunning);
        }
    }
}

/// Starts a new generation in `slot`; as the slot's current worker when `current`.
fn spawn(shared: &Arc<Shared>, slot: u32, current: bool) -> Result<Spawned, StartError> {
    let id = {
        let mut state = shared.state();
        let s = &mut state.slots[slot as usize - 1];
        s.generation += 1;
        WorkerId {
            slot,
            generation: s.generation,
        }
    };
    let config = &shared.config;
    let (control, control_child) = FdSocket::pair()?;
    let (log, log_child) = FdSocket::pair()?;
    let (listen, listen_child) = FdSocket::pair()?;
    let (clients, clients_child) = FdSocket::pair()?;
    // Round-robin only (in shared mode the pipe carries nothing): bound the worker's queue,
    // and keep a duplicate of the worker's end, so connections still queued when the worker
    // exits can be read back and passed to other workers.
    let worker_end = match config.balance {
        Balance::RoundRobin => {
            bound_handoff_queue(&clients)?;
            Some(rustix::io::fcntl_dupfd_cloexec(&clients_child, 0).map_err(std::io::Error::from)?)
        }
        Balance::Shared => None,
    };
    let mut command = tokio::process::Command::new(&config.program);
    command
        .args(&config.args)
        .envs(config.env.iter().map(|(k, v)| (k, v)));
    if let Some(cwd) = &config.cwd {
        command.current_dir(cwd);
    }
    let numbers: Vec<String> = [control_child, log_child, listen_child, clients_child]
        .into_iter()
        .map(|fd| fdpass::inherit_fd(command.as_std_mut(), fd.into()).to_string())
        .collect();
    command
        .env(ENV_WORKER_ID, slot.to_string())
        .env(ENV_WORKER_GENERATION, id.generation.to_string())
        .env(ENV_WORKER_FDS, numbers.join(","))
        .env(
            ENV_HEARTBEAT_MS,
            config.heartbeat_interval.as_millis().to_string(),
        )
        .env(ENV_BALANCE, config.balance.as_str())
        .stdin(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    let child = match command.spawn() {
        Ok(child) => child,
        Err(source) => {
            shared.emit(Event::SpawnFailed {
                id,
                error: source.to_string(),
            });
            return Err(StartError::Spawn {
                program: config.program.clone(),
                source,
            });
        }
    };
    // Our copies of the children's ends close with the command.
    drop(command);
    let pid = child.id().unwrap_or(0);
    let (control_tx, control_rx) =
        Channel::<WatcherToWorker, WorkerToWatcher>::new(control.into_async()?).split();
    let clients: ClientPipe = Arc::new(ClientSocketSendPipe::<ClientMeta>::new(
        clients.into_async()?,
    ));
    let (status_tx, status) = watch::channel(Status::Starting);
    {
        let mut state = shared.state();
        if !state.running {
            // `stop` ran while this worker was being spawned (a respawn racing with it) and
            // cannot have seen it: it must not outlive the cluster. `kill_on_drop` ends it.
            drop(state);
            drop(child);
            return Err(StartError::NotRunning);
        }
        state.workers.insert(
            id,
            WorkerHandle {
                pid,
                control: control_tx.clone(),
                status: status.clone(),
                stopping: None,
                killed: None,
                clients: clients.clone(),
            },
        );
        if current {
            state.slots[slot as usize - 1].current = Some(id);
        }
    }
    shared.emit(Event::Started { id, pid });
    let log = log.into_async()?;
    let listen = listen.into_async()?;
    let shared = shared.clone();
    spawn_in(shared.span.clone(), async move {
        let started = Instant::now();
        let exit = supervise(
            &shared, id, pid, child, control_rx, log, listen, clients, worker_end, &status_tx,
        )
        .await;
        let _ = status_tx.send(Status::Exited(exit));
        shared.emit(Event::Exited(exit));
        after_exit(&shared, exit, started.elapsed());
    });
    Ok(Spawned { id, pid, status })
}

/// Spawns a task of the watcher, inside `span` so its log lines carry the embedding
/// program's context (the `cluster` binary's `--name`, say).
pub(crate) fn spawn_in<F>(span: tracing::Span, task: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(tracing::Instrument::instrument(task, span))
}

/// Watches one worker until it has exited and all it sent was read; returns how it ended.
#[allow(clippy::too_many_arguments)]
async fn supervise(
    shared: &Arc<Shared>,
    id: WorkerId,
    pid: u32,
    mut child: tokio::process::Child,
    control: ChannelReceiver<WorkerToWatcher>,
    log: AsyncFdSocket,
    listen: AsyncFdSocket,
    clients: ClientPipe,
    worker_end: Option<OwnedFd>,
    status: &watch::Sender<Status>,
) -> WorkerExit {
    let logs = spawn_in(shared.span.clone(), forward_logs(log, id, pid));
    let listens = {
        let shared = shared.clone();
        let clients = clients.clone();
        spawn_in(shared.span.clone(), async move {
            let balancer = shared.balancer.clone();
            let round_robin = shared.config.balance == Balance::RoundRobin;
            let result = shared
                .provider
                .serve_with(&listen, |address, fd| {
                    if round_robin {
                        let ready = shared
                            .state()
                            .workers
                            .get(&id)
                            .is_some_and(|w| *w.status.borrow() == Status::Ready);
                        balancer.register(address, fd, id, clients.clone(), ready);
                    }
                })
                .await;
            if let Err(e) = result {
                tracing::warn!(worker = %id, pid, error = %e, "bad server-socket request; closing that channel");
            }
        })
    };
    let config = &shared.config;
    let far = Duration::from_secs(365 * 24 * 3600);
    let mut ready = false;
    let mut deadline = tokio::time::Instant::now() + config.ready_timeout;
    let kill = |shared: &Shared, child: &mut tokio::process::Child, reason: KillReason| {
        let _ = child.start_kill();
        if let Some(w) = shared.state().workers.get_mut(&id) {
            w.killed.get_or_insert(reason);
        }
        shared.emit(Event::Killed { id, pid, reason });
    };
    loop {
        tokio::select! {
            message = control.recv() => match message {
                Ok(Some(WorkerToWatcher::Heartbeat)) => {
                    if ready {
                        deadline = tokio::time::Instant::now() + config.heartbeat_timeout;
                    }
                }
                Ok(Some(WorkerToWatcher::Ready)) => {
                    if !ready {
                        ready = true;
                        deadline = tokio::time::Instant::now() + config.heartbeat_timeout;
                        let _ = status.send(Status::Ready);
                        shared.balancer.set_ready(id);
                        shared.emit(Event::Ready { id, pid });
                    }
                }
                Ok(Some(WorkerToWatcher::Shutdown)) => {
                    let shared = shared.clone();
                    spawn_in(shared.span.clone(), async move { stop_worker(&shared, id, StopCause::Requested).await });
                }
                Ok(Some(WorkerToWatcher::Message(payload))) => {
                    let sender = shared.messages.lock().unwrap_or_else(PoisonError::into_inner).clone();
                    let reply = shared.state().workers.get(&id).map(|w| w.control.clone());
                    if let (Some(sender), Some(reply)) = (sender, reply) {
                        let _ = sender.send(WorkerMessage { id, pid, payload, reply });
                    }
                }
                Ok(None) => break,
                // Closed with our last message unread: a peer that went away, not bad traffic.
                Err(e) if e.io_error().is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset) => break,
                Err(e) => {
                    tracing::warn!(worker = %id, pid, error = %e, "bad control traffic from worker; killing it");
                    let _ = child.start_kill();
                    break;
                }
            },
            () = tokio::time::sleep_until(deadline) => {
                let reason = if ready { KillReason::HeartbeatTimeout } else { KillReason::ReadyTimeout };
                kill(shared, &mut child, reason);
                deadline = tokio::time::Instant::now() + far;
            }
        }
    }
    // End of file on control: the process is exiting (or closed the socket and must go).
    let status = match tokio::time::timeout(config.shutdown_timeout, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            kill(shared, &mut child, KillReason::ShutdownTimeout);
            child.wait().await
        }
    };
    // Logs sent before exit are still in the socket: read them all before reporting the exit.
    let _ = tokio::time::timeout(Duration::from_secs(2), logs).await;
    listens.abort();
    shared.balancer.remove(id);
    if let Some(worker_end) = worker_end {
        shared.balancer.reclaim(&clients, worker_end);
    }
    let mut state = shared.state();
    let handle = state.workers.remove(&id);
    let exit_status = match status {
        Ok(status) => ExitKind::from(status),
        Err(_) => ExitKind::Code(-1),
    };
    WorkerExit {
        id,
        pid,
        status: exit_status,
        stopped: handle.as_ref().and_then(|h| h.stopping),
        killed: handle.as_ref().and_then(|h| h.killed),
    }
}

/// Decides whether and when the slot gets a new process.
fn after_exit(shared: &Arc<Shared>, exit: WorkerExit, uptime: Duration) {
    let config = &shared.config;
    let delay = {
        let mut state = shared.state();
        if !state.running {
            return;
        }
        let Some(slot) = state.slots.get_mut(exit.id.slot as usize - 1) else {
            return;
        };
        if !slot.wanted || slot.current != Some(exit.id) {
            return; // replaced, scaled down or stopping
        }
        slot.current = None;
        // Only a worker that ends itself soon after starting looks like a crash loop. One that
        // ran a while, or was killed from outside (SIGKILL: an operator, the OOM killer, a
        // test), is replaced at once and clears the slot's record.
        let killed_from_outside = exit.status == ExitKind::Signal(9) && exit.killed.is_none();
        if uptime >= config.min_uptime || killed_from_outside {
            slot.backoff = Duration::ZERO;
            Duration::ZERO
        } else {
            // The first early crash is replaced at once too; each further one in a row waits
            // twice as long as the last.
            let delay = slot.backoff;
            slot.backoff = (delay * 2).clamp(config.backoff_initial, config.backoff_max);
            delay
        }
    };
    let next = WorkerId {
        slot: exit.id.slot,
        generation: exit.id.generation + 1,
    };
    shared.emit(Event::Respawning { id: next, delay });
    let shared = shared.clone();
    spawn_in(shared.span.clone(), async move {
        tokio::time::sleep(delay).await;
        let still_wanted = {
            let state = shared.state();
            state.running
                && state
                    .slots
                    .get(exit.id.slot as usize - 1)
                    .is_some_and(|s| s.wanted && s.current.is_none())
        };
        if still_wanted && spawn(&shared, exit.id.slot, true).is_err() {
            // A failed spawn counts as a crash of the next generation: retry after the
            // (grown) backoff.
            if let Some(s) = shared.state().slots.get_mut(exit.id.slot as usize - 1) {
                s.current = Some(next);
            }
            after_exit(&shared, WorkerExit { id: next, ..exit }, Duration::ZERO);
        }
    });
}

/// Replaces the worker of `slot` with a new generation, readiness-gated.
async fn replace_slot(shared: &Arc<Shared>, slot: u32) -> Result<(), StartError> {
    let spawned = spawn(shared, slot, false)?;
    let new = spawned.id;
    if let Err(e) = wait_ready(shared, spawned).await {
        // The failed replacement is gone or being killed; the old worker stays current.
        stop_worker(shared, new, StopCause::Replaced).await;
        return Err(e);
    }
    let old = {
        let mut state = shared.state();
        let s = &mut state.slots[slot as usize - 1];
        s.current.replace(new)
    };
    if let Some(old) = old {
        shared.balancer.remove(old);
        let shared = shared.clone();
        // The old worker drains in the background; the next slot does not wait for it.
        spawn_in(shared.span.clone(), async move {
            stop_worker(&shared, old, StopCause::Replaced).await
        });
    }
    Ok(())
}

/// Asks a worker to stop, kills it at the shutdown timeout, and returns how it ended.
async fn stop_worker(shared: &Arc<Shared>, id: WorkerId, cause: StopCause) -> Option<WorkerExit> {
    let (control, mut status, pid, clients) = {
        let mut state = shared.state();
        let worker = state.workers.get_mut(&id)?;
        worker.stopping.get_or_insert(cause);
        (
            worker.control.clone(),
            worker.status.clone(),
            worker.pid,
            worker.clients.clone(),
        )
    };
    // No new connections; the ones already sent are drained by the worker before it stops.
    shared.balancer.remove(id);
    Balancer::close_pipe(&clients);
    let _ = control.send(&WatcherToWorker::Stop).await;
    let wait = async {
        loop {
            if let Status::Exited(exit) = *status.borrow_and_update() {
                return Some(exit);
            }
            if status.changed().await.is_err() {
                return None;
            }
        }
    };
    let mut wait = Box::pin(wait);
    if let Ok(exit) = tokio::time::timeout(shared.config.shutdown_timeout, &mut wait).await {
        return exit;
    }
    if let Some(w) = shared.state().workers.get_mut(&id) {
        w.killed.get_or_insert(KillReason::ShutdownTimeout);
    }
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32)?,
        rustix::process::Signal::KILL,
    );
    shared.emit(Event::Killed {
        id,
        pid,
        reason: KillReason::ShutdownTimeout,
    });
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .ok()
        .flatten()
}

async fn forward_logs(log: AsyncFdSocket, id: WorkerId, pid: u32) {
    let channel = Channel::<(), LogRecord>::new(log);
    loop {
        match channel.recv().await {
            Ok(Some(record)) => emit_record(&record, id, pid),
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(worker = %id, pid, error = %e, "bad log traffic from worker; ignoring its logs");
                return;
            }
        }
    }
}

fn emit_record(record: &LogRecord, id: WorkerId, pid: u32) {
    let mut message = record.message.clone();
    for (key, value) in &record.fields {
        message.push_str(&format!(" {key}={value}"));
    }
    let origin = record.target.as_str();
    match record.level {
        0 => tracing::trace!(target: "worker", worker = id.slot, pid, origin, "{message}"),
        1 => tracing::debug!(target: "worker", worker = id.slot, pid, origin, "{message}"),
        2 => tracing::info!(target: "worker", worker = id.slot, pid, origin, "{message}"),
        3 => tracing::warn!(target: "worker", worker = id.slot, pid, origin, "{message}"),
        _ => tracing::error!(target: "worker", worker = id.slot, pid, origin, "{message}"),
    }
}

fn log_event(event: &Event) {
    match event {
        Event::Started { id, pid } => {
            tracing::info!(
                worker = id.slot,
                pid,
                generation = id.generation,
                "worker started"
            )
        }
        Event::Ready { id, pid } => tracing::info!(worker = id.slot, pid, "worker ready"),
        Event::Killed { id, pid, reason } => {
            tracing::warn!(worker = id.slot, pid, %reason, "worker killed")
        }
        Event::Exited(exit) => match (exit.stopped, exit.killed) {
            (_, Some(reason)) => {
                tracing::warn!(worker = exit.id.slot, pid = exit.pid, status = %exit.status, %reason, "worker killed and reaped")
            }
            (Some(cause), None) => {
                tracing::info!(worker = exit.id.slot, pid = exit.pid, status = %exit.status, ?cause, "worker stopped")
            }
            (None, None) => {
                tracing::error!(worker = exit.id.slot, pid = exit.pid, status = %exit.status, "worker exited unexpectedly")
            }
        },
        Event::Respawning { id, delay } => {
            tracing::info!(worker = id.slot, ?delay, "respawning worker")
        }
        Event::SpawnFailed { id, error } => {
            tracing::error!(worker = id.slot, %error, "cannot start worker")
        }
    }
}
