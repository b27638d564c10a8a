//! One worker process: spawning it with its bootstrap contract, the tasks that read what it
//! sends, and the one way it is killed (its whole process group).
//!
//! Everything a worker can send is bounded here before it reaches the driver: heartbeats
//! are forwarded at most twice per interval, `Ready` and `Shutdown` once, application
//! messages go to a bounded queue with a byte budget (the rest is counted and dropped), log
//! records are size-capped and sanitized.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cluster_ipc::protocol::{
    ClientMeta, WatcherToWorker, WorkerBootstrap, WorkerFds, WorkerToWatcher,
};
use cluster_ipc::{
    Channel, ChannelReceiver, ChannelSender, ClientSocketReceivePipe, ClientSocketSendPipe,
};
use fdpass::{AsyncFdSocket, FdSocket, Limits};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::containment::Containment;
use super::forwarding::{Forwarding, Input};
use super::hand_backs::read_hand_backs;
use super::logs::forward_logs;
use super::output::forward_output;
use crate::balance::{ClientPipe, Mode, bound_handoff_queue};
use crate::messages::{MessageSink, deliver};
use crate::notify::NotifySocket;
use crate::shared::Shared;
use crate::{ExitKind, WorkerId};

/// How long the readers may take, after the process ended, to deliver what it sent.
const READ_AFTER_EXIT: Duration = Duration::from_secs(2);

/// The largest log record accepted from a worker; a larger one is skipped.
const MAX_LOG_RECORD: usize = 256 * 1024;

/// The driver's handle on a live worker process.
#[derive(Debug)]
pub(crate) struct Process {
    pub(crate) pid: u32,
    /// The cluster channel of a `cluster-worker` program (`None` in program mode).
    pub(crate) link: Option<WorkerLink>,
}

/// The watcher's ends of a `cluster-worker` program's sockets.
#[derive(Debug)]
pub(crate) struct WorkerLink {
    pub(crate) control: ChannelSender<WatcherToWorker>,
    pub(crate) clients: ClientPipe,
    /// Round-robin: a duplicate of the worker's end of its hand-off pipe, to read back the
    /// connections still queued when it exits.
    pub(crate) worker_end: Option<OwnedFd>,
}

/// What the watch task of a `cluster-worker` program reads.
struct LinkTasks {
    /// The connections (and live sessions) it hands back when it stops: read to the end
    /// before its exit is reported, so a stop (or the old watcher of an upgrade) never ends
    /// with one of them still unread in the pipe.
    hand_backs: ClientSocketReceivePipe<ClientMeta>,
    control: ChannelReceiver<WorkerToWatcher>,
    reply: ChannelSender<WatcherToWorker>,
    messages: Option<MessageSink>,
    log: AsyncFdSocket,
    listen: AsyncFdSocket,
    clients: ClientPipe,
}

/// `SIGKILL` to the worker's process group (it and whatever it forked), and to the worker
/// itself in case it left the group: the only way the watcher kills.
pub(crate) fn kill_group(pid: u32) {
    let Some(pid) = rustix::process::Pid::from_raw(pid as i32) else {
        return;
    };
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
}

/// `SIGKILL` to what is left of an exited worker's process group (children it forked).
pub(crate) fn kill_leftovers(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// Starts the process for `id` and its watch task (in `tasks`, which the driver owns).
pub(crate) fn spawn_worker(
    shared: &Arc<Shared>,
    id: WorkerId,
    inputs: &mpsc::Sender<Input>,
    messages: Option<MessageSink>,
    tasks: &mut JoinSet<()>,
    containment: &Containment,
) -> std::io::Result<Process> {
    if shared.config().program_mode() {
        let (mut command, notify) = super::program::command(shared, id, containment)?;
        let child = command.spawn()?;
        drop(command);
        let pid = child.id().unwrap_or(0);
        let watch = Watch {
            shared: shared.clone(),
            id,
            pid,
            inputs: inputs.clone(),
        };
        let talk = Talk::Program(notify);
        tasks.spawn(watch.run(child, talk).instrument(shared.span.clone()));
        return Ok(Process { pid, link: None });
    }
    spawn_cluster_worker(shared, id, inputs, messages, tasks, containment)
}

/// How a worker talks to the watcher besides its output.
enum Talk {
    /// A `cluster-worker` program: its sockets.
    Link(Box<LinkTasks>),
    /// A program given listeners: its notify socket (if any).
    Program(Option<NotifySocket>),
}

/// A `cluster-worker` program's four sockets: the watcher's ends and the worker's.
struct WorkerSockets {
    control: (FdSocket, FdSocket),
    log: (FdSocket, FdSocket),
    listen: (FdSocket, FdSocket),
    clients: (FdSocket, FdSocket),
    /// Round-robin and least-conn: a duplicate of the worker's end of its hand-off pipe.
    worker_end: Option<OwnedFd>,
}

impl WorkerSockets {
    fn new(config: &crate::WatcherConfig) -> std::io::Result<Self> {
        let clients = FdSocket::pair()?;
        // Round-robin and least-conn only (otherwise the pipe carries only hand-overs): bound
        // the worker's queue, and keep a duplicate of the worker's end, so connections still
        // queued when the worker exits can be read back and passed to other workers.
        let worker_end = if Mode::of(config.balance).accepts() {
            bound_handoff_queue(&clients.0)?;
            Some(rustix::io::fcntl_dupfd_cloexec(&clients.1, 0)?)
        } else {
            None
        };
        Ok(Self {
            control: FdSocket::pair()?,
            log: FdSocket::pair()?,
            listen: FdSocket::pair()?,
            clients,
            worker_end,
        })
    }

    /// The worker's command: its ends inherited, the bootstrap contract in its environment.
    /// The watcher's ends are returned.
    fn command(
        self,
        config: &crate::WatcherConfig,
        id: WorkerId,
        containment: &Containment,
    ) -> (tokio::process::Command, [FdSocket; 4], Option<OwnedFd>) {
        let mut command = tokio::process::Command::new(&config.program);
        containment.prepare(command.as_std_mut(), id);
        command
            .args(&config.args)
            .envs(config.env.iter().map(|(k, v)| (k, v)));
        if let Some(cwd) = &config.cwd {
            command.current_dir(cwd);
        }
        let mut inherit = |fd: FdSocket| fdpass::inherit_fd(command.as_std_mut(), fd.into());
        let fds = WorkerFds {
            control: inherit(self.control.1),
            log: inherit(self.log.1),
            listen: inherit(self.listen.1),
            clients: inherit(self.clients.1),
        };
        let bootstrap = WorkerBootstrap {
            id: id.slot,
            generation: id.generation,
            fds,
            heartbeat: config.heartbeat_interval,
            balance: config.balance,
            // Accepted non-blocking (`balance/accept_thread.rs`); hand-backs are checked by
            // their typed receive, a predecessor's connections by `balance::vouch_for`.
            clients_vouched: true,
        };
        command.envs(bootstrap.to_env());
        super::command::prepare(&mut command, config, id);
        let ours = [self.control.0, self.log.0, self.listen.0, self.clients.0];
        (command, ours, self.worker_end)
    }
}

/// A `cluster-worker` program: four sockets and the bootstrap contract in its environment.
fn spawn_cluster_worker(
    shared: &Arc<Shared>,
    id: WorkerId,
    inputs: &mpsc::Sender<Input>,
    messages: Option<MessageSink>,
    tasks: &mut JoinSet<()>,
    containment: &Containment,
) -> std::io::Result<Process> {
    let sockets = WorkerSockets::new(&shared.config())?;
    let (mut command, [control, log, listen, clients], worker_end) =
        sockets.command(&shared.config(), id, containment);
    let child = command.spawn()?;
    // Our copies of the children's ends close with the command.
    drop(command);
    let pid = child.id().unwrap_or(0);
    let (control_tx, control_rx) =
        Channel::<WatcherToWorker, WorkerToWatcher>::new(control.into_async()?).split();
    let clients: ClientPipe = Arc::new(ClientSocketSendPipe::<ClientMeta>::new(
        clients.into_async()?,
    ));
    let log = log
        .into_async()?
        .with_limits(Limits::default().max_message_len(MAX_LOG_RECORD).max_fds(0));
    // Idle connections the worker hands back when it stops come the other way on its
    // hand-off pipe: a task of their own reads them until the worker's end is gone.
    let hand_backs = rustix::io::fcntl_dupfd_cloexec(&*clients, 0)?;
    let hand_backs = ClientSocketReceivePipe::<ClientMeta>::new(
        AsyncFdSocket::from_fd(hand_backs).map_err(std::io::Error::other)?,
    );
    let span = shared.span.clone();
    let link = LinkTasks {
        hand_backs,
        control: control_rx,
        reply: control_tx.clone(),
        messages,
        log,
        listen: listen.into_async()?,
        clients: clients.clone(),
    };
    let watch = Watch {
        shared: shared.clone(),
        id,
        pid,
        inputs: inputs.clone(),
    };
    tasks.spawn(
        watch
            .run(child, Talk::Link(Box::new(link)))
            .instrument(span),
    );
    Ok(Process {
        pid,
        link: Some(WorkerLink {
            control: control_tx,
            clients,
            worker_end,
        }),
    })
}

/// The tasks of one worker.
#[derive(Debug, Clone)]
struct Watch {
    shared: Arc<Shared>,
    id: WorkerId,
    pid: u32,
    inputs: mpsc::Sender<Input>,
}

impl Watch {
    /// Waits for the process to end and says so at once (it serves no more); then reads
    /// all it sent (at most [`READ_AFTER_EXIT`]: a daemon it left may hold its output open)
    /// and reports the exit.
    async fn run(self, mut child: tokio::process::Child, talk: Talk) {
        let span = self.shared.span.clone();
        let mut readers = JoinSet::new();
        let exited = tokio::sync::watch::Sender::new(false);
        if let Some(stdout) = child.stdout.take() {
            readers.spawn(
                forward_output(stdout, self.id, self.pid, "stdout").instrument(span.clone()),
            );
        }
        if let Some(stderr) = child.stderr.take() {
            readers.spawn(
                forward_output(stderr, self.id, self.pid, "stderr").instrument(span.clone()),
            );
        }
        // Tasks for as long as the worker lives: listen requests, notifications.
        let mut living = JoinSet::new();
        let mut notify = None;
        match talk {
            Talk::Link(link) => {
                readers.spawn(
                    self.clone()
                        .read_control(link.control, link.reply, link.messages)
                        .instrument(span.clone()),
                );
                readers.spawn(forward_logs(link.log, self.id, self.pid).instrument(span.clone()));
                readers.spawn(
                    read_hand_backs(
                        self.shared.clone(),
                        link.hand_backs,
                        self.id,
                        self.pid,
                        exited.subscribe(),
                    )
                    .instrument(span.clone()),
                );
                living.spawn(
                    self.clone()
                        .serve_listen(link.listen, link.clients)
                        .instrument(span),
                );
            }
            Talk::Program(Some(socket)) => {
                let socket = Arc::new(socket);
                living.spawn(self.clone().read_notify(socket.clone()).instrument(span));
                notify = Some(socket);
            }
            Talk::Program(None) => {}
        }
        let status = child
            .wait()
            .await
            .map_or(ExitKind::Code(-1), ExitKind::from);
        let _ = self.inputs.send(Input::MainExited(self.id)).await;
        exited.send_replace(true);
        drop(living);
        // What it said just before it went.
        while let Some(notification) = notify.as_ref().and_then(|s| s.try_recv()) {
            let _ = self.inputs.send(Input::Notify(self.id, notification)).await;
        }
        let _ = tokio::time::timeout(READ_AFTER_EXIT, async {
            while readers.join_next().await.is_some() {}
        })
        .await;
        let _ = self.inputs.send(Input::Exited(self.id, status)).await;
    }

    /// Program mode: the worker's notifications, to the driver.
    async fn read_notify(self, socket: Arc<NotifySocket>) {
        while let Ok(notification) = socket.recv().await {
            if self
                .inputs
                .send(Input::Notify(self.id, notification))
                .await
                .is_err()
            {
                return;
            }
        }
    }

    async fn read_control(
        self,
        control: ChannelReceiver<WorkerToWatcher>,
        reply: ChannelSender<WatcherToWorker>,
        messages: Option<MessageSink>,
    ) {
        let (id, pid) = (self.id, self.pid);
        let mut forwarding = Forwarding::new(id);
        let mut dropped_warnings = 0u64;
        loop {
            let input = match control.recv().await {
                Ok(Some(WorkerToWatcher::Closed(total))) => {
                    // Straight to the balancer: least-conn reads it on the next hand-off.
                    self.shared.balancer.closed(id, total);
                    continue;
                }
                Ok(Some(WorkerToWatcher::Metrics(text))) => {
                    let updated = self.shared.app_metrics.store.lock().update(id, &text);
                    if let Err(why) = updated {
                        tracing::warn!(
                            worker = id.slot,
                            pid,
                            error = why,
                            "application metrics that cannot be read; the previous ones are kept"
                        );
                    }
                    continue;
                }
                Ok(Some(WorkerToWatcher::Message(payload))) => {
                    if let Some(sink) = &messages
                        && !deliver(sink, id, pid, payload, &reply)
                    {
                        warn_dropped(sink, id, pid, &mut dropped_warnings);
                    }
                    continue;
                }
                Ok(Some(message)) => match forwarding.input(message) {
                    Some(input) => input,
                    None => continue,
                },
                Ok(None) => Input::ControlClosed(id),
                // Closed with our last message unread: a peer that went away, not bad traffic.
                Err(e)
                    if e.io_error()
                        .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset) =>
                {
                    Input::ControlClosed(id)
                }
                Err(e) => {
                    tracing::warn!(worker = id.slot, pid, error = %e, "bad control traffic from worker");
                    Input::BadTraffic(id)
                }
            };
            let last = matches!(input, Input::ControlClosed(_) | Input::BadTraffic(_));
            if self.inputs.send(input).await.is_err() || last {
                return;
            }
        }
    }

    async fn serve_listen(self, listen: AsyncFdSocket, clients: ClientPipe) {
        let shared = &self.shared;
        let span = tracing::info_span!("listen", worker = self.id.slot, pid = self.pid);
        let result = shared
            .provider
            .serve_slot(&listen, Some(self.id.slot), |address, fd| {
                shared
                    .listens()
                    .entry(self.id)
                    .or_default()
                    .insert(address.clone());
                // Round-robin: the watcher accepts for it. Both modes: it can be given
                // connections other workers hand back.
                shared
                    .balancer
                    .register(address, fd, self.id, clients.clone());
            })
            .instrument(span)
            .await;
        if let Err(e) = result {
            tracing::warn!(worker = self.id.slot, pid = self.pid, error = %e, "bad server-socket request; closing that channel");
        }
    }
}

/// Says that a worker's messages are dropped (nobody reads `messages()` fast enough): at
/// the first drop, then at every tenfold more, so a flood writes a handful of lines.
fn warn_dropped(sink: &MessageSink, id: WorkerId, pid: u32, warned: &mut u64) {
    let dropped = sink.dropped.load(Ordering::Relaxed);
    if dropped >= warned.saturating_mul(10).max(1) {
        *warned = dropped;
        tracing::warn!(
            worker = id.slot,
            pid,
            dropped,
            "message queue full (nobody reads `messages()` fast enough); messages dropped"
        );
    }
}
