//! The worker's live connection to its watcher: control traffic, heartbeat, the
//! server-socket factory, the counters it reports; the connections it sends and takes back
//! are `handoff.rs`'s.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use std::time::Duration;

use cluster_ipc::protocol::{WatcherToWorker, WorkerToWatcher};
use cluster_ipc::{Channel, ChannelReceiver, ChannelSender, ServerSocketPipeFactory};
use fdpass::AsyncFdSocket;
use tokio::sync::{mpsc, watch};

use crate::WorkerError;
use crate::env::{Endpoint, WorkerEnv, bootstrap_error, worker_env};
pub(crate) use crate::handoff::{Handoff, Transferred};

/// Why the watcher side ended, as seen by the control reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WatcherState {
    Running,
    StopRequested,
    Gone,
}

#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) env: &'static WorkerEnv,
    pub(crate) control: ChannelSender<WorkerToWatcher>,
    pub(crate) state: watch::Receiver<WatcherState>,
    pub(crate) inbox: tokio::sync::Mutex<mpsc::UnboundedReceiver<Vec<u8>>>,
    pub(crate) listen: Option<ServerSocketPipeFactory>,
    /// Connections to and from the watcher (round-robin hand-offs, hand-backs).
    pub(crate) handoff: Handoff,
    /// Connections accepted and closed, reported to the watcher.
    pub(crate) counters: Counters,
    ready_sent: AtomicBool,
    pub(crate) defer_ready: AtomicBool,
}

static LINK: OnceLock<Result<Arc<Link>, String>> = OnceLock::new();

/// The link to the watcher, set up on first use (inside a tokio runtime).
pub(crate) fn link() -> Result<Arc<Link>, WorkerError> {
    if let Some(error) = bootstrap_error() {
        return Err(WorkerError::Bootstrap(error.clone()));
    }
    let env = worker_env().ok_or(WorkerError::NotAWorker)?;
    LINK.get_or_init(|| connect(env).map(Arc::new).map_err(|e| e.to_string()))
        .clone()
        .map_err(|_| WorkerError::MissingSocket("control"))
}

fn adopt(
    env: &WorkerEnv,
    endpoint: Endpoint,
    name: &'static str,
) -> Result<AsyncFdSocket, WorkerError> {
    let fd = env.take(endpoint).ok_or(WorkerError::MissingSocket(name))?;
    AsyncFdSocket::from_fd(fd).map_err(|e| WorkerError::Io(std::io::Error::other(e)))
}

fn connect(env: &'static WorkerEnv) -> Result<Link, WorkerError> {
    let (control, events) =
        Channel::<WorkerToWatcher, WatcherToWorker>::new(adopt(env, Endpoint::Control, "control")?)
            .split();
    let (state_tx, state) = watch::channel(WatcherState::Running);
    let (inbox_tx, inbox) = mpsc::unbounded_channel();
    tokio::spawn(read_watcher(events, state_tx, inbox_tx));
    let counters = Counters::default();
    crate::metrics::attach(control.clone());
    tokio::spawn(send_heartbeats(
        control.clone(),
        env.heartbeat,
        counters.clone(),
    ));
    if env.balance.traits().least_loaded {
        tokio::spawn(report_closes(control.clone(), counters.clone()));
    }
    let listen = env
        .take(Endpoint::Listen)
        .and_then(|fd| AsyncFdSocket::from_fd(fd).ok())
        .map(ServerSocketPipeFactory::new);
    let handoff = Handoff::new(
        env.take(Endpoint::Clients),
        env.balance.hands_off(),
        env.clients_vouched,
    )?;
    Ok(Link {
        env,
        control,
        state,
        inbox: tokio::sync::Mutex::new(inbox),
        listen,
        handoff,
        counters,
        ready_sent: AtomicBool::new(false),
        defer_ready: AtomicBool::new(false),
    })
}

/// Reads what the watcher says: a stop request, messages; its end means it is gone.
async fn read_watcher(
    events: ChannelReceiver<WatcherToWorker>,
    state: watch::Sender<WatcherState>,
    inbox: mpsc::UnboundedSender<Vec<u8>>,
) {
    loop {
        match events.recv().await {
            Ok(Some(WatcherToWorker::Stop)) => {
                crate::drain::begin(crate::drain::Plan {
                    spread: Duration::ZERO,
                    timeout: crate::drain::DEFAULT_TIMEOUT,
                });
                let _ = state.send(WatcherState::StopRequested);
            }
            Ok(Some(WatcherToWorker::Drain { spread, timeout })) => {
                crate::drain::begin(crate::drain::Plan { spread, timeout });
                let _ = state.send(WatcherState::StopRequested);
            }
            Ok(Some(WatcherToWorker::Message(bytes))) => {
                let _ = inbox.send(bytes);
            }
            Ok(Some(WatcherToWorker::Rebalance { count })) => crate::rebalance::release(count),
            // A message this version does not know (a newer watcher): skipped, not fatal.
            Err(e) if e.io_error().is_none() => {
                tracing::debug!(error = %e, "a message from the watcher this worker cannot read; skipped");
            }
            Ok(None) | Err(_) => {
                let _ = state.send(WatcherState::Gone);
                // The watcher is gone: give the program a moment to finish, then go too, so
                // no orphan outlives its supervisor.
                std::thread::spawn(|| {
                    std::thread::sleep(Duration::from_millis(1500));
                    std::process::exit(1);
                });
                return;
            }
        }
    }
}

/// A heartbeat every `interval` from this runtime (a blocked runtime sends none), with the
/// count of accepted connections when it changed, and that count at once when the first
/// connection comes (the watcher then knows this worker served).
async fn send_heartbeats(
    control: ChannelSender<WorkerToWatcher>,
    interval: Duration,
    counters: Counters,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut reported, mut reported_open, mut reported_requests) = (0, 0, 0);
    let mut reported_metrics = None;
    loop {
        let beat = tokio::select! {
            _ = tick.tick() => true,
            () = counters.first_accept.notified() => false,
        };
        let total = counters.accepted.load(Ordering::Relaxed);
        if total != reported {
            reported = total;
            if control
                .send(&WorkerToWatcher::Accepted(total))
                .await
                .is_err()
            {
                return;
            }
        }
        let requests = REQUESTS.total();
        if beat && requests != reported_requests {
            reported_requests = requests;
            if control
                .send(&WorkerToWatcher::Requests(requests))
                .await
                .is_err()
            {
                return;
            }
        }
        let open = counters.open.load(Ordering::Relaxed);
        if beat && open != reported_open {
            reported_open = open;
            if control.send(&WorkerToWatcher::Open(open)).await.is_err() {
                return;
            }
        }
        if beat && control.send(&WorkerToWatcher::Heartbeat).await.is_err() {
            return;
        }
        if beat
            && let Some(text) = crate::metrics::exposition()
            && reported_metrics.as_ref() != Some(&text)
        {
            if control
                .send(&WorkerToWatcher::Metrics(text.clone()))
                .await
                .is_err()
            {
                return;
            }
            reported_metrics = Some(text);
        }
    }
}

/// How long a close report waits for the closes that follow it.
const CLOSES_COALESCED: Duration = Duration::from_millis(5);

/// Least-conn: the count of closed connections, soon after each close.
async fn report_closes(control: ChannelSender<WorkerToWatcher>, counters: Counters) {
    let mut reported = 0;
    loop {
        counters.closed_changed.notified().await;
        // The closes of the next 5 ms go in the same report: under load a report per close
        // was one more message per request for the watcher to read, and each report wakes
        // the watcher's runtime, which its accept threads otherwise leave asleep (a count
        // a few milliseconds old is as good for picking the least loaded: both workers'
        // counts lag alike, and a slow request lasts far longer).
        tokio::time::sleep(CLOSES_COALESCED).await;
        let closed = counters.closed.load(Ordering::Relaxed);
        if closed != reported {
            reported = closed;
            if control
                .send(&WorkerToWatcher::Closed(closed))
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

impl Link {
    pub(crate) async fn ready(&self) -> Result<(), WorkerError> {
        if !self.ready_sent.swap(true, Ordering::SeqCst) {
            self.control.send(&WorkerToWatcher::Ready).await?;
        }
        Ok(())
    }
}

/// HTTP requests the serve loops answered, in this process (reported with heartbeats).
pub(crate) static REQUESTS: Sharded = Sharded::new();

/// A counter every thread adds to without sharing a cache line with the others (a request
/// is counted on whichever runtime thread serves it; one shared atomic would bounce between
/// the cores at every request).
#[derive(Debug)]
pub(crate) struct Sharded([Padded; SHARDS]);

const SHARDS: usize = 16;

/// One counter on a cache line of its own.
#[derive(Debug)]
#[repr(align(128))]
struct Padded(AtomicU64);

impl Sharded {
    const fn new() -> Self {
        Self([const { Padded(AtomicU64::new(0)) }; SHARDS])
    }

    /// Adds one, on this thread's shard.
    pub(crate) fn add_one(&self) {
        use std::sync::atomic::AtomicUsize;
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
        }
        SHARD.with(|&shard| self.0[shard].0.fetch_add(1, Ordering::Relaxed));
    }

    /// The sum over the shards.
    pub(crate) fn total(&self) -> u64 {
        self.0.iter().map(|p| p.0.load(Ordering::Relaxed)).sum()
    }
}

/// What a worker counts and reports to its watcher.
#[derive(Debug, Default, Clone)]
pub(crate) struct Counters {
    /// Connections its listeners accepted, reported with heartbeats.
    pub(crate) accepted: Arc<AtomicU64>,
    /// Least-conn: connections from the watcher it closed (or handed back), reported soon
    /// after each close; closes while a report is on its way go in the next.
    pub(crate) closed: Arc<AtomicU64>,
    /// Woken at each close (least-conn).
    pub(crate) closed_changed: Arc<tokio::sync::Notify>,
    /// Woken at the first accepted connection.
    pub(crate) first_accept: Arc<tokio::sync::Notify>,
    /// Connections open now (accepted and not yet dropped).
    pub(crate) open: Arc<AtomicU64>,
}
