//! Handing connections to workers: in round-robin and least-conn mode every connection the
//! watcher accepts, in every mode the idle keep-alive connections that stopping workers hand
//! back.
//!
//! Round-robin takes the next ready worker in turn. Least-conn takes the ready worker with
//! the fewest open connections, counted as connections sent minus those the worker reported
//! closed (`WorkerToWatcher::Closed`), ties broken in turn (HAProxy's rule): for short
//! connections it is round-robin, for long or slow ones it keeps away from the busy worker.
//! A report that is late only makes a worker look busier than it is, never idler. Between
//! workers with the same number of open connections (not zero), the one that closed one
//! most recently goes first: a worker stuck on a slow request reports nothing, and without
//! this it would get every other connection of a short-connection load while it is stuck.

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Mutex, MutexGuard};
use std::time::Duration;

use cluster_ipc::protocol::ClientMeta;
use cluster_ipc::{ChannelError, ClientSocketSendPipe, ListenAddress};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::Mode;
use super::accept_thread::Acceptor;
use super::hash::{self, HashKey};
use super::pick::{self, Rule, pick};
use crate::WorkerId;

/// How long a hand-off waits on one full worker before looking at the others again.
const FULL_WAIT: Duration = Duration::from_millis(2);

/// The send buffer of the watcher's end of each worker's hand-off pipe (the kernel doubles
/// it), which bounds the connections waiting for that worker: about 20 instead of the
/// default buffer's 280. A worker that falls behind, or stops without missing its heartbeat
/// yet, then holds few connections hostage, and the rest wait in the listen backlog where
/// any worker can take them. A packet must fit in the buffer (the kernel refuses larger ones
/// with `EMSGSIZE`): hand-off messages are about 50 bytes, far below it.
const HANDOFF_SEND_BUFFER: usize = 8 * 1024;

/// Bounds the connections queued for one worker on its hand-off pipe (see
/// [`HANDOFF_SEND_BUFFER`]).
pub(crate) fn bound_handoff_queue(pipe: &impl std::os::fd::AsFd) -> std::io::Result<()> {
    Ok(rustix::net::sockopt::set_socket_send_buffer_size(
        pipe,
        HANDOFF_SEND_BUFFER,
    )?)
}

/// The most connections whose request head the watcher reads at once for their key; past
/// it, a connection is hashed by its address.
pub(super) const MAX_READING: usize = 1024;

pub(crate) type ClientPipe = Arc<ClientSocketSendPipe<ClientMeta>>;

/// One worker's connections: sent by the watcher, closed as the worker reported.
#[derive(Debug, Default)]
pub(crate) struct Load {
    pub(super) sent: AtomicU64,
    closed: AtomicU64,
    /// When it last reported a close, in microseconds since the balancer was made.
    last_close: AtomicU64,
}

impl Load {
    /// Connections sent and not reported closed.
    fn open(&self) -> u64 {
        self.sent
            .load(Ordering::Relaxed)
            .saturating_sub(self.closed.load(Ordering::Relaxed))
    }

    /// What least-conn compares at `now` (microseconds since the balancer's epoch): open
    /// connections, then the time since the last close while any is open.
    fn weight(&self, now: u64) -> pick::Load {
        let open = self.open();
        let quiet = if open == 0 {
            0
        } else {
            now.saturating_sub(self.last_close.load(Ordering::Relaxed))
        };
        (open, quiet)
    }
}

#[derive(Debug)]
pub(super) struct Target {
    pub(super) id: WorkerId,
    pub(super) pipe: ClientPipe,
    pub(super) ready: bool,
    pub(super) load: Arc<Load>,
    /// Its share of new connections in thousandths (slow start), [`pick::FULL`] after.
    pub(super) weight: u16,
}

/// The worker a connection goes to.
pub(super) struct Pick {
    id: WorkerId,
    pub(super) pipe: ClientPipe,
    pub(super) load: Arc<Load>,
    /// Every ready worker was passed over already for this connection (their queues are
    /// full): wait on this one.
    all_full: bool,
}

#[derive(Debug, Default)]
pub(super) struct Route {
    pub(super) targets: Vec<Target>,
    next: usize,
}

/// Which workers listen on which address, and the accept threads feeding them.
#[derive(Debug)]
pub(crate) struct Balancer {
    // Each accept loop holds its own route, so the per-connection pick hashes nothing.
    pub(super) routes: Mutex<HashMap<ListenAddress, Arc<Mutex<Route>>>>,
    /// Workers that reported ready and are not stopping (kept under the routes lock).
    ready: Mutex<HashSet<WorkerId>>,
    /// Woken when a worker becomes ready or the balancer shuts down: a connection waiting
    /// for a ready worker waits on this, not on a timer.
    changed: Notify,
    /// Dispatching and reclaiming tasks, aborted at shutdown.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Each address's accept thread, stopped when the address is released.
    pub(super) accepting: Mutex<HashMap<ListenAddress, Acceptor>>,
    /// Set at shutdown: a connection with no ready worker left is closed, not kept waiting.
    closed: AtomicBool,
    /// Round-robin and least-conn: the watcher accepts on every registered address.
    pub(super) accepts: bool,
    /// How the next worker is picked.
    rule: Rule,
    /// Each live worker's connection count (least-conn), shared by its targets.
    loads: Mutex<HashMap<WorkerId, Arc<Load>>>,
    /// Where the loads' close times count from.
    epoch: std::time::Instant,
    /// Set once a successor watcher took over (never unset): every connection this one
    /// would hand to a worker goes there instead.
    pub(super) successor: std::sync::OnceLock<ClientPipe>,
    /// The key connections are hashed by (`hash` mode, and `reuseport` with `hash=ip` for
    /// the connections stopping workers hand back); `None`: not hashed.
    pub(super) hash_key: Option<HashKey>,
    /// Bounds the connections whose request head is being read for their key at once.
    pub(super) reading: Arc<tokio::sync::Semaphore>,
    /// Connections hashed by their address because their head did not give the key.
    pub(crate) hash_fallbacks: AtomicU64,
    /// The state of [`roll`](Self::roll)'s random numbers.
    pub(super) dice: AtomicU64,
    /// Live rebalancing: the workers handed-back connections go to first, and how many more.
    pub(super) preferred: Mutex<Vec<(WorkerId, u32)>>,
    /// The watcher's span, for the tasks spawned here.
    pub(super) span: tracing::Span,
}

impl Balancer {
    /// A balancer for `balance` (round-robin, least-conn and hash accept on every
    /// registered address), hashing by `hash_key` when there is one.
    pub(crate) fn new(
        span: tracing::Span,
        balance: cluster_ipc::protocol::Balance,
        hash_key: Option<HashKey>,
    ) -> Self {
        Self {
            routes: Mutex::default(),
            ready: Mutex::default(),
            changed: Notify::new(),
            tasks: Mutex::default(),
            accepting: Mutex::default(),
            closed: AtomicBool::new(false),
            accepts: Mode::of(balance).accepts(),
            rule: if hash_key.is_some() {
                Rule::Rendezvous
            } else {
                Mode::of(balance).rule()
            },
            loads: Mutex::default(),
            epoch: std::time::Instant::now(),
            successor: std::sync::OnceLock::new(),
            hash_key,
            reading: Arc::new(tokio::sync::Semaphore::new(MAX_READING)),
            hash_fallbacks: AtomicU64::new(0),
            dice: AtomicU64::new(0x2545_f491_4f6c_dd1d),
            preferred: Mutex::new(Vec::new()),
            span,
        }
    }

    pub(super) fn routes(&self) -> MutexGuard<'_, HashMap<ListenAddress, Arc<Mutex<Route>>>> {
        self.routes.lock()
    }

    pub(super) fn each_route(&self, f: impl FnMut(&mut Route)) {
        let routes = self.routes();
        self.each_route_locked(&routes, f);
    }

    fn each_route_locked(
        &self,
        routes: &HashMap<ListenAddress, Arc<Mutex<Route>>>,
        mut f: impl FnMut(&mut Route),
    ) {
        for route in routes.values() {
            f(&mut route.lock());
        }
    }

    /// Worker `id` listens on `address` (bound as `fd`); starts the accept loop on first use.
    pub(crate) fn register(
        self: &Arc<Self>,
        address: &ListenAddress,
        fd: &OwnedFd,
        id: WorkerId,
        pipe: ClientPipe,
    ) {
        // Under the routes lock, which `shutdown` takes too: a loop started here is either
        // seen and aborted by `shutdown`, or not started at all.
        let mut routes = self.routes();
        if self.closed.load(Ordering::SeqCst) {
            return; // stopping: no new accept loop may outlive the cluster
        }
        let ready = self.ready_set().contains(&id);
        let first = !routes.contains_key(address);
        let route = routes.entry(address.clone()).or_default().clone();
        let load = self.load(id);
        {
            let mut route = route.lock();
            route.targets.retain(|t| t.id != id);
            route.targets.push(Target {
                id,
                pipe,
                ready,
                load,
                weight: pick::FULL,
            });
        }
        if first && self.accepts {
            match fd
                .try_clone()
                .and_then(|fd| Acceptor::start(self, fd, address, route))
            {
                Ok(acceptor) => {
                    self.accepting.lock().insert(address.clone(), acceptor);
                }
                Err(e) => {
                    tracing::error!(%address, error = %e, "cannot accept on listener")
                }
            }
        }
        drop(routes);
    }

    fn load(&self, id: WorkerId) -> Arc<Load> {
        self.loads.lock().entry(id).or_default().clone()
    }

    /// Worker `id` reports `total` connections closed so far (least-conn).
    pub(crate) fn closed(&self, id: WorkerId, total: u64) {
        let load = self.loads.lock().get(&id).cloned();
        if let Some(load) = load {
            load.closed.fetch_max(total, Ordering::Relaxed);
            load.last_close
                .store(self.micros_since_epoch(), Ordering::Relaxed);
        }
    }

    fn micros_since_epoch(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Each live worker's open connections as the watcher counts them (least-conn).
    pub(crate) fn open_connections(&self) -> HashMap<WorkerId, u64> {
        self.loads
            .lock()
            .iter()
            .map(|(id, load)| (*id, load.open()))
            .collect()
    }

    fn ready_set(&self) -> MutexGuard<'_, HashSet<WorkerId>> {
        self.ready.lock()
    }

    pub(crate) fn set_ready(&self, id: WorkerId) {
        let routes = self.routes();
        self.ready_set().insert(id);
        self.changed.notify_waiters();
        self.each_route_locked(&routes, |route| {
            route
                .targets
                .iter_mut()
                .filter(|t| t.id == id)
                .for_each(|t| t.ready = true);
        });
    }

    /// No more connections for `id` (it is stopping or gone).
    pub(crate) fn remove(&self, id: WorkerId) {
        self.ready_set().remove(&id);
        self.each_route(|route| route.targets.retain(|t| t.id != id));
    }

    /// `id` exited: its connection count goes too.
    pub(crate) fn forget(&self, id: WorkerId) {
        self.remove(id);
        self.loads.lock().remove(&id);
    }

    /// Closes the sending side of `pipe`: the worker reads every connection already sent,
    /// then end of file, and knows nothing more will come. A transfer racing with this fails
    /// and its connection goes to the next worker.
    pub(crate) fn close_pipe(pipe: &ClientPipe) {
        let _ = rustix::net::shutdown(&**pipe, rustix::net::Shutdown::Write);
    }

    /// Stops accepting on `address` (no worker listens there any more); its socket closes
    /// once the provider lets go of it too.
    pub(crate) fn release(&self, address: &ListenAddress) {
        let mut routes = self.routes();
        routes.remove(address);
        if let Some(acceptor) = self.accepting.lock().remove(address) {
            acceptor.close();
        }
    }

    /// Stops accepting (the listening sockets stay open in the provider).
    pub(crate) fn shutdown(&self) {
        let mut routes = self.routes();
        self.closed.store(true, Ordering::SeqCst);
        // A later start registers its workers afresh and starts new accept loops.
        routes.clear();
        self.ready_set().clear();
        self.loads.lock().clear();
        for (_, acceptor) in self.accepting.lock().drain() {
            acceptor.close();
        }
        drop(routes);
        self.changed.notify_waiters();
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
    }

    /// Accepts again after a [`shutdown`](Self::shutdown) (the watcher started anew).
    pub(crate) fn reopen(&self) {
        self.closed.store(false, Ordering::SeqCst);
    }

    pub(super) fn track(&self, task: JoinHandle<()>) {
        let mut tasks = self.tasks.lock();
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// The ready worker to try next, skipping those in `full` (see [`pick`]): `None` when
    /// no worker is ready. With a `key`, the owner of its slot ([`hash::owner`]), waited on
    /// when its queue is full rather than passed over: the key must not move.
    pub(super) fn pick(
        &self,
        route: &Mutex<Route>,
        full: &[WorkerId],
        key: Option<u32>,
    ) -> Option<Pick> {
        let mut route = route.lock();
        if let (Rule::Rendezvous, Some(key)) = (self.rule, key) {
            let ready = route.targets.iter().enumerate().filter(|(_, t)| t.ready);
            let index = hash::owner(key, ready.map(|(i, t)| (i, t.id)))?;
            let target = &route.targets[index];
            return Some(Pick {
                id: target.id,
                pipe: target.pipe.clone(),
                load: target.load.clone(),
                all_full: true,
            });
        }
        let now = match self.rule {
            Rule::LeastLoaded => self.micros_since_epoch(),
            Rule::InTurn | Rule::Rendezvous => 0,
        };
        let targets = &route.targets;
        let target = |i: usize| {
            let target: &Target = &targets[i];
            let weight = target.weight;
            target
                .ready
                .then(|| (target.id, target.load.weight(now), weight))
        };
        let (index, all_full) = pick(self.rule, targets.len(), route.next, full, target, || {
            self.roll()
        })?;
        route.next = index + 1;
        let target = &route.targets[index];
        Some(Pick {
            id: target.id,
            pipe: target.pipe.clone(),
            load: target.load.clone(),
            all_full,
        })
    }

    /// Hands `socket` to the next ready worker on `route` (see [`pick`](Self::pick); with
    /// `key`, its slot's worker). An
    /// accepted connection is never dropped: it waits for a ready worker, and a failed
    /// transfer moves on to the next one; only after shutdown, with no worker left, is it
    /// closed. A worker whose queue is full (busy, or stopped and not yet past its heartbeat
    /// timeout) is passed over; only when every ready worker is full does the loop wait,
    /// briefly, on one of them, and then look again, so one stuck worker never holds up the
    /// others.
    pub(super) async fn hand_off(
        &self,
        route: &Mutex<Route>,
        socket: OwnedFd,
        meta: &ClientMeta,
        prefix: &[u8],
        key: Option<u32>,
    ) {
        if self.to_successor(&socket, meta, prefix).await {
            return;
        }
        let mut full: Vec<WorkerId> = Vec::new();
        loop {
            // Registered before looking, so a worker becoming ready in between is not missed.
            let changed = self.changed.notified();
            let Some(pick) = self.pick(route, &full, key) else {
                if self.closed.load(Ordering::SeqCst) {
                    return;
                }
                // No ready worker: wait until one is (the timeout only guards the unexpected).
                let _ = tokio::time::timeout(Duration::from_secs(1), changed).await;
                continue;
            };
            // At once if the worker's queue has room: the timed wait below costs a timer
            // per connection, and a keyed pick (hash modes) always allows it.
            let sent = match pick.pipe.try_send_with_prefix(&socket, meta, prefix) {
                Err(failed) if failed.is_full() && pick.all_full => {
                    full.clear();
                    // Cancelling a one-packet send leaves nothing sent and the socket ours.
                    let send = pick.pipe.send_with_prefix(&socket, meta, prefix);
                    match tokio::time::timeout(FULL_WAIT, send).await {
                        Ok(sent) => sent,
                        Err(_) => continue,
                    }
                }
                other => other,
            };
            match sent {
                Ok(()) => {
                    pick.load.sent.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(failed) if failed.is_full() => full.push(pick.id),
                Err(failed) if is_gone(&failed.error) => {
                    tracing::debug!(worker = %pick.id, error = %failed.error, "transfer failed; trying the next worker");
                    self.remove(pick.id);
                }
                // Anything else (out of descriptors, say) says nothing about the worker: it
                // stays, and the loop looks again shortly instead of spinning.
                Err(failed) => {
                    tracing::warn!(worker = %pick.id, error = %failed.error, "transfer failed; retrying");
                    full.push(pick.id);
                    tokio::time::sleep(FULL_WAIT).await;
                }
            }
        }
    }
}

/// Whether a failed transfer means the worker's end of the pipe is gone.
fn is_gone(error: &ChannelError) -> bool {
    error.io_error().is_some_and(|e| {
        matches!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::NotConnected
        )
    })
}
