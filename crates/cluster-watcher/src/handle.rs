//! [`ClusterWatcher`]: a thin handle that asks the driver task (through its
//! [`Remote`]) and awaits the outcome; [`WorkerInfo`].

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cluster_ipc::protocol::{ClientMeta, WatcherToWorker};
use cluster_ipc::{ClientSocketSendPipe, ServerSocketProvider};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

use crate::balance::{Balancer, Mode};
use crate::control::Remote;
use crate::core::{Failure, Outcome};
use crate::driver::{Command, Driver};
use crate::messages::message_queue;
use crate::shared::{Messages, Shared};
use crate::task::spawn_in;
use crate::{
    ClusterStatus, Event, SendError, StartError, WatcherConfig, WorkerExit, WorkerId, WorkerInfo,
    WorkerMessage,
};

/// Supervises a cluster of worker processes running one program.
///
/// Embeddable in any tokio program; the `cluster` binary is a thin shell around it. The
/// handle sends commands to one driver task, which owns every worker process and applies
/// the supervision policy; the methods that change the cluster send their command when
/// called and return a future for the outcome, so dropping that future never cancels the
/// command. Workers are spawned with their four sockets inherited (no socket on the
/// filesystem), their bootstrap contract in the environment, and in a process group of
/// their own (so a terminal's Ctrl-C reaches only the watcher, and a kill takes whatever
/// the worker forked too). Listening sockets are owned here for the watcher's whole life,
/// so restarts never refuse a connection.
///
/// Dropping a running watcher stops its workers: gracefully while the runtime runs (the
/// driver goes on until they are gone), with `SIGKILL` to their process groups if the
/// runtime itself is shutting down. A dropped watcher never respawns anything.
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
    /// Keeps the driver running: once the last sender is gone, it stops the cluster.
    _commands: mpsc::UnboundedSender<Command>,
    /// How everything is asked.
    remote: Remote,
    /// The driver's end, until the first `start` spawns the driver.
    driver: Mutex<Option<mpsc::UnboundedReceiver<Command>>>,
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
        let provider = Mode::of(config.balance).provider();
        let dropped_messages = Arc::new(AtomicU64::new(0));
        let (sink, receiver) = message_queue(dropped_messages.clone());
        let (commands, driver) = mpsc::unbounded_channel();
        let balancer = Arc::new(Balancer::new(
            span.clone(),
            config.balance,
            config.sticky_key(),
        ));
        let shared = Arc::new(Shared {
            config: parking_lot::RwLock::new(Arc::new(config)),
            events,
            provider,
            balancer,
            span,
            messages: Mutex::new(Messages {
                receiver: Some(receiver),
                sink: Some(sink),
            }),
            dropped_messages,
            published: Mutex::default(),
            listens: Mutex::default(),
            notify: std::sync::OnceLock::new(),
            driver_running: std::sync::atomic::AtomicBool::new(false),
            created: std::time::Instant::now(),
            draining: std::sync::atomic::AtomicBool::new(false),
            log_drops: std::sync::OnceLock::new(),
            datagrams: crate::driver::datagrams::Datagrams::default(),
            app_metrics: Arc::default(),
        });
        Self {
            remote: Remote::new(commands.downgrade(), shared.clone()),
            shared,
            _commands: commands,
            driver: Mutex::new(Some(driver)),
        }
    }

    /// The configuration workers are started with now (a reload replaces it).
    pub fn config(&self) -> Arc<WatcherConfig> {
        self.shared.config()
    }

    /// The provider that owns the cluster's listening sockets: bind here ahead of time to
    /// fail early on a busy port, or to inspect what workers listen on.
    pub fn server_sockets(&self) -> &ServerSocketProvider {
        &self.shared.provider
    }

    /// Program mode's UDP and QUIC groups (an upgrade moves them with the sockets).
    pub(crate) fn datagrams(&self) -> &crate::driver::datagrams::Datagrams {
        &self.shared.datagrams
    }

    /// An upgrade this watcher started will not happen (the successor failed, exited or was
    /// abandoned after [`SuccessorLink::send_sockets`](crate::SuccessorLink::send_sockets)):
    /// this watcher steers its QUIC groups again, which the successor did meanwhile.
    pub fn upgrade_abandoned(&self) {
        self.shared.datagrams.take_back();
    }

    /// Upgrades: from now on, every connection this watcher would hand to a worker (the idle
    /// keep-alive connections its stopping workers hand back, those queued for a worker that
    /// exits, and in round-robin and least-conn modes those it accepted) goes to `successor`
    /// instead, a watcher that took over the listening sockets
    /// ([`ServerSocketProvider::export`]) and passes what it receives to
    /// [`hand_over`](Self::hand_over); and this watcher stops accepting. Call it before
    /// stopping this watcher's workers.
    pub fn hand_connections_to(&self, successor: ClientSocketSendPipe<ClientMeta>) {
        self.remote.send(Command::HandedOver);
        self.shared.balancer.hand_to_successor(Arc::new(successor));
    }

    /// Gives a connection to a ready worker listening on `meta.listener` (waiting for one
    /// if none is ready yet), with `prefix`, bytes already read from it, replayed first: the
    /// other end of a predecessor's [`hand_connections_to`](Self::hand_connections_to).
    /// A descriptor that is not a connected stream socket is closed; one in blocking mode is
    /// made non-blocking (workers take what the watcher sends unchecked).
    pub async fn hand_over(&self, socket: OwnedFd, meta: &ClientMeta, prefix: &[u8]) {
        if let Err(e) = crate::balance::vouch_for(&socket) {
            tracing::warn!(listener = %meta.listener, error = %e, "a handed-over descriptor is not a connected stream socket; closed");
            return;
        }
        self.shared.balancer.hand_over(socket, meta, prefix).await;
    }

    /// Worker events from now on. A subscriber that falls more than 1,024 events behind
    /// misses the oldest.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// The stream of worker messages, once per start; `None` if already taken.
    ///
    /// Messages are kept from the start on, whether or not anyone took the stream yet: up
    /// to 1,024 messages or 16 MiB of payload waiting to be read; past that, messages are
    /// dropped and counted ([`dropped_messages`](Self::dropped_messages)). The stream ends
    /// (`recv` gives `None`) once [`stop`](Self::stop) has finished; a later `start` opens
    /// a new one.
    pub fn messages(&self) -> Option<mpsc::Receiver<WorkerMessage>> {
        self.shared.messages.lock().receiver.take()
    }

    /// Messages dropped because the queue of [`messages`](Self::messages) was full.
    pub fn dropped_messages(&self) -> u64 {
        self.shared.dropped_messages.load(Ordering::Relaxed)
    }

    /// Starts `workers` workers and returns once all are ready.
    ///
    /// # Errors
    /// [`StartError`] naming the worker that failed and why; every worker started by this
    /// call is stopped again.
    pub async fn start(&self, workers: usize) -> Result<(), StartError> {
        if self.shared.config().program_mode() {
            self.shared
                .span
                .in_scope(|| crate::driver::prepare_program_mode(&self.shared))?;
        }
        if let Some(commands) = self.driver.lock().take() {
            let driver = Driver::new(self.shared.clone(), commands);
            spawn_in(self.shared.span.clone(), driver.run());
            self.shared.driver_running.store(true, Ordering::SeqCst);
            if self.shared.config().app_metrics_ports {
                let shared = Arc::downgrade(&self.shared);
                let interval = move || shared.upgrade().map(|s| s.config().metrics_interval);
                spawn_in(
                    self.shared.span.clone(),
                    crate::appmetrics::keep_reading(
                        Arc::downgrade(&self.shared.app_metrics),
                        interval,
                    ),
                );
            }
        }
        match self.remote.start(workers).await {
            Some(Outcome::Started(Ok(()))) => Ok(()),
            Some(Outcome::Started(Err(failure))) => {
                if !matches!(failure, Failure::AlreadyStarted | Failure::ZeroWorkers) {
                    self.stop().await;
                }
                Err(crate::control::error(&self.shared.config(), failure))
            }
            _ => Err(StartError::NotRunning),
        }
    }

    /// Adds one worker (a new slot, or the lowest freed one) and waits until it is ready.
    ///
    /// # Errors
    /// [`StartError`] if it fails to start (the slot stays and is respawned as usual).
    pub async fn add_worker(&self) -> Result<WorkerId, StartError> {
        self.remote.add_worker().await
    }

    /// Stops the worker in the highest slot gracefully; never the last one. Returns how it
    /// ended.
    pub async fn remove_worker(&self) -> Option<WorkerExit> {
        self.remote.remove_worker().await
    }

    /// Runs exactly `workers` slots from now on: new slots start (without waiting for them
    /// to be ready), surplus slots stop gracefully, highest first. The command takes effect
    /// when this is called; the future only reports it.
    ///
    /// # Errors
    /// [`StartError::NotRunning`] or [`StartError::ZeroWorkers`].
    pub fn scale(&self, workers: usize) -> impl Future<Output = Result<(), StartError>> + use<> {
        self.remote.scale(workers)
    }

    /// Rolling restart, one slot at a time (see [`WatcherConfig::restart_parallelism`]):
    /// start the replacement, wait until it is ready, then stop the old worker gracefully.
    /// The listening sockets stay open throughout, so no connection is refused. A
    /// replacement that fails leaves the old worker serving; the first such failure is
    /// returned after every slot was tried.
    ///
    /// Requests made while a restart runs are coalesced: they share one more restart that
    /// begins when the running one ends, so every caller gets a restart that began after
    /// its request. The command takes effect when this is called.
    ///
    /// # Errors
    /// The first [`StartError`] of a replacement; [`StartError::NotRunning`].
    pub fn restart(&self) -> impl Future<Output = Result<(), StartError>> + use<> {
        self.remote.restart()
    }

    /// Runs `config` with `workers` workers from now on, with no connection refused: new
    /// slots start with it, surplus slots stop, and every other slot is replaced through
    /// the rolling-restart path (readiness first). `changed` names what differs, for the
    /// log and the status. The new configuration is kept once every worker of it has been
    /// ready for `min_uptime`; if one fails to start, is not ready in time, or ends on its
    /// own before that, the previous configuration and worker count come back the same way
    /// and the answer is the reason, once the old configuration serves again. The command
    /// takes effect when this is called.
    ///
    /// # Errors
    /// [`ReloadError::NeedsUpgrade`](crate::ReloadError::NeedsUpgrade) when `config` changes the balance mode or the listeners
    /// (nothing changed: that takes a new watcher); [`ReloadError::Refused`](crate::ReloadError::Refused) when the
    /// cluster does not run or another reload is under way; [`ReloadError::RolledBack`](crate::ReloadError::RolledBack)
    /// with the failure that made it go back.
    pub fn reload(
        &self,
        config: WatcherConfig,
        workers: usize,
        changed: Vec<String>,
    ) -> impl Future<Output = Result<(), crate::ReloadError>> + use<> {
        self.remote.reload(config, workers, changed)
    }

    /// Stops every worker: asks each to finish in-flight work, `SIGKILL`s those still running
    /// after the shutdown timeout, reaps them all, and says how each ended. No worker is
    /// respawned afterwards; the message stream ends. The command takes effect when this is
    /// called.
    pub fn stop(&self) -> impl Future<Output = Vec<WorkerExit>> + use<> {
        self.remote.stop()
    }

    /// A snapshot of every slot: processes, phases, counters, last exits (the control
    /// socket's `status` adds each worker's memory and CPU).
    pub async fn status(&self) -> ClusterStatus {
        self.remote.status(false).await
    }

    /// The live workers.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        self.shared.published().workers.clone()
    }

    /// Sends a message to the current worker of `slot`.
    ///
    /// # Errors
    /// [`SendError::NoSuchWorker`], or when the worker is gone.
    pub async fn send_to<T: Serialize>(&self, slot: u32, message: &T) -> Result<(), SendError> {
        let control = self
            .shared
            .published()
            .current
            .get(&slot)
            .cloned()
            .ok_or(SendError::NoSuchWorker(slot))?;
        let bytes = postcard::to_stdvec(message).map_err(SendError::Encode)?;
        Ok(control.send(&WatcherToWorker::Message(bytes)).await?)
    }

    /// Sends a message to every live worker; returns how many received it.
    ///
    /// # Errors
    /// When the message cannot be encoded.
    pub async fn broadcast<T: Serialize>(&self, message: &T) -> Result<usize, SendError> {
        let bytes = postcard::to_stdvec(message).map_err(SendError::Encode)?;
        let controls = self.shared.published().controls.clone();
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

    /// Serves the control socket at `path` (see [`control`](crate::control) for the
    /// protocol): status, restart, scale, stop and, with a [`LogFeed`](crate::LogFeed), logs.
    /// Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// When the directory is not private to this user, another cluster answers on `path`,
    /// or the socket cannot be bound.
    pub fn serve_control(
        &self,
        path: &std::path::Path,
        logs: Option<crate::LogFeed>,
    ) -> std::io::Result<crate::ControlServer> {
        crate::control::serve(self.remote.clone(), path, logs)
    }

    /// Serves `/metrics` (Prometheus text), `/healthz` and `/readyz` over HTTP on `address`.
    ///
    /// # Errors
    /// When `address` cannot be bound.
    pub async fn serve_metrics(
        &self,
        address: std::net::SocketAddr,
        readiness: crate::Readiness,
    ) -> std::io::Result<crate::MetricsServer> {
        crate::control::serve_metrics(self.remote.clone(), address, readiness).await
    }

    /// How the embedding program counts the log lines it dropped (its log writer's counter):
    /// status and `/metrics` (`cluster_log_lines_dropped_total`) show it. Set once.
    pub fn count_dropped_log_lines(&self, counter: impl Fn() -> u64 + Send + Sync + 'static) {
        let _ = self.shared.log_drops.set(Box::new(counter));
    }

    /// While set, `/readyz` answers 503 although workers serve: a load balancer deregisters
    /// the instance before it stops (`--stop-delay`).
    pub fn set_draining(&self, draining: bool) {
        self.shared.draining.store(draining, Ordering::SeqCst);
    }
}
