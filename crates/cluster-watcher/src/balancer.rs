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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cluster_ipc::protocol::ClientMeta;
use cluster_ipc::{ChannelError, ClientSocketReceivePipe, ClientSocketSendPipe, ListenAddress};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::WorkerId;
use crate::driver::spawn_in;

/// How long the accept loop waits on one full worker before looking at the others again.
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

pub(crate) type ClientPipe = Arc<ClientSocketSendPipe<ClientMeta>>;

/// One worker's connections: sent by the watcher, closed as the worker reported.
#[derive(Debug, Default)]
pub(crate) struct Load {
    sent: AtomicU64,
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
}

#[derive(Debug)]
struct Target {
    id: WorkerId,
    pipe: ClientPipe,
    ready: bool,
    load: Arc<Load>,
}

/// The worker a connection goes to.
struct Pick {
    id: WorkerId,
    pipe: ClientPipe,
    load: Arc<Load>,
    /// Every ready worker was passed over already for this connection (their queues are
    /// full): wait on this one.
    all_full: bool,
}

#[derive(Debug, Default)]
struct Route {
    targets: Vec<Target>,
    next: usize,
}

/// Which workers listen on which address, and the accept loops feeding them.
#[derive(Debug)]
pub(crate) struct Balancer {
    // Each accept loop holds its own route, so the per-connection pick hashes nothing.
    routes: Mutex<HashMap<ListenAddress, Arc<Mutex<Route>>>>,
    /// Workers that reported ready and are not stopping (kept under the routes lock).
    ready: Mutex<HashSet<WorkerId>>,
    /// Woken when a worker becomes ready or the balancer shuts down: a connection waiting
    /// for a ready worker waits on this, not on a timer.
    changed: Notify,
    /// Accept loops and reclaiming tasks, aborted at shutdown.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Each address's accept loop, aborted when the address is released.
    accepting: Mutex<HashMap<ListenAddress, tokio::task::AbortHandle>>,
    /// Set at shutdown: a connection with no ready worker left is closed, not kept waiting.
    closed: AtomicBool,
    /// Round-robin and least-conn: the watcher accepts on every registered address.
    accepts: bool,
    /// Least-conn: pick the worker with the fewest open connections.
    least_conn: bool,
    /// Each live worker's connection count (least-conn), shared by its targets.
    loads: Mutex<HashMap<WorkerId, Arc<Load>>>,
    /// Where the loads' close times count from.
    epoch: std::time::Instant,
    /// Set once a successor watcher took over (never unset): every connection this one
    /// would hand to a worker goes there instead.
    successor: std::sync::OnceLock<ClientPipe>,
    /// The watcher's span, for the tasks spawned here.
    span: tracing::Span,
}

impl Balancer {
    /// A balancer for `balance` (round-robin and least-conn accept on every registered
    /// address).
    pub(crate) fn new(span: tracing::Span, balance: cluster_ipc::protocol::Balance) -> Self {
        Self {
            routes: Mutex::default(),
            ready: Mutex::default(),
            changed: Notify::new(),
            tasks: Mutex::default(),
            accepting: Mutex::default(),
            closed: AtomicBool::new(false),
            accepts: balance.hands_off(),
            least_conn: balance == cluster_ipc::protocol::Balance::LeastConn,
            loads: Mutex::default(),
            epoch: std::time::Instant::now(),
            successor: std::sync::OnceLock::new(),
            span,
        }
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, HashMap<ListenAddress, Arc<Mutex<Route>>>> {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn each_route(&self, f: impl FnMut(&mut Route)) {
        let routes = self.routes();
        self.each_route_locked(&routes, f);
    }

    fn each_route_locked(
        &self,
        routes: &HashMap<ListenAddress, Arc<Mutex<Route>>>,
        mut f: impl FnMut(&mut Route),
    ) {
        for route in routes.values() {
            f(&mut lock(route));
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
            let mut route = lock(&route);
            route.targets.retain(|t| t.id != id);
            route.targets.push(Target {
                id,
                pipe,
                ready,
                load,
            });
        }
        if first && self.accepts {
            match fd.try_clone().and_then(fdpass::RawAcceptor::new) {
                Ok(listener) => {
                    let this = self.clone();
                    let owned = address.clone();
                    let task = spawn_in(self.span.clone(), async move {
                        this.accept_loop(listener, owned, route).await
                    });
                    self.accepting
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(address.clone(), task.abort_handle());
                    self.track(task);
                }
                Err(e) => {
                    tracing::error!(%address, error = %e, "round-robin: cannot accept on listener")
                }
            }
        }
        drop(routes);
    }

    fn load(&self, id: WorkerId) -> Arc<Load> {
        self.loads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id)
            .or_default()
            .clone()
    }

    /// Worker `id` reports `total` connections closed so far (least-conn).
    pub(crate) fn closed(&self, id: WorkerId, total: u64) {
        let load = self
            .loads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned();
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
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(id, load)| (*id, load.open()))
            .collect()
    }

    fn ready_set(&self) -> std::sync::MutexGuard<'_, HashSet<WorkerId>> {
        self.ready.lock().unwrap_or_else(PoisonError::into_inner)
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
        self.loads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
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
        if let Some(task) = self
            .accepting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(address)
        {
            task.abort();
        }
    }

    /// From now on every connection goes to `successor` (a watcher that took over), and
    /// this one stops accepting: the successor accepts on the same sockets.
    pub(crate) fn hand_to_successor(&self, successor: ClientPipe) {
        // A second successor is refused by the upgrade protocol before it gets here.
        let _ = self.successor.set(successor);
        for (_, task) in self
            .accepting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
        {
            task.abort();
        }
    }

    /// Sends a connection to the successor; `false` if there is none.
    async fn to_successor(&self, socket: &OwnedFd, meta: &ClientMeta, prefix: &[u8]) -> bool {
        let Some(successor) = self.successor.get() else {
            return false;
        };
        let send = successor.send_with_prefix(socket, meta, prefix);
        match tokio::time::timeout(Duration::from_secs(5), send).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e.error, "a connection for the successor watcher could not be passed; closed");
            }
            Err(_) => tracing::warn!("the successor watcher takes no connections; one closed"),
        }
        true
    }

    /// Stops accepting (the listening sockets stay open in the provider).
    pub(crate) fn shutdown(&self) {
        let mut routes = self.routes();
        self.closed.store(true, Ordering::SeqCst);
        // A later start registers its workers afresh and starts new accept loops.
        routes.clear();
        self.ready_set().clear();
        self.loads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.accepting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        drop(routes);
        self.changed.notify_waiters();
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            task.abort();
        }
    }

    /// Accepts again after a [`shutdown`](Self::shutdown) (the watcher started anew).
    pub(crate) fn reopen(&self) {
        self.closed.store(false, Ordering::SeqCst);
    }

    fn track(&self, task: JoinHandle<()>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// Connections still queued for a worker that has exited go to the other workers, so a
    /// crash or a kill loses only the connections the worker had taken (and, during a
    /// shutdown, those no worker is left to take). `worker_end` is the
    /// watcher's duplicate of the worker's end of its hand-off pipe, kept for this: the
    /// queue lives as long as any descriptor of that end.
    pub(crate) fn reclaim(self: &Arc<Self>, pipe: &ClientPipe, worker_end: OwnedFd) {
        // With our end shut for writing, reading the worker's end stops at end of file.
        Self::close_pipe(pipe);
        let queued = match fdpass::AsyncFdSocket::from_fd(worker_end) {
            Ok(socket) => ClientSocketReceivePipe::<ClientMeta, OwnedFd>::new(socket),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read an exited worker's queued connections");
                return;
            }
        };
        let this = self.clone();
        self.track(spawn_in(self.span.clone(), async move {
            let mut reclaimed = 0usize;
            // The queue holds a few dozen connections at most (HANDOFF_SEND_BUFFER); the cap
            // and the timeout only guard against the unexpected.
            for _ in 0..4096 {
                let client =
                    match tokio::time::timeout(Duration::from_secs(1), queued.receive()).await {
                        Ok(Ok(Some(client))) => client,
                        // End of file: everything queued was read.
                        Ok(Ok(None)) | Err(_) => break,
                        Ok(Err(e)) => match e.io_error() {
                            Some(io) => {
                                tracing::warn!(error = %io, "reading back an exited worker's queue failed");
                                break;
                            }
                            // One bad message costs only itself.
                            None => {
                                tracing::warn!(error = %e, "unreadable hand-off in an exited worker's queue");
                                continue;
                            }
                        },
                    };
                if this
                    .to_successor(&client.socket, &client.data, &client.prefix)
                    .await
                {
                    reclaimed += 1;
                    continue;
                }
                let route = this.routes().get(&client.data.listener).cloned();
                match route {
                    Some(route) => {
                        this.hand_off(&route, client.socket, &client.data, &client.prefix)
                            .await;
                        reclaimed += 1;
                    }
                    None => tracing::warn!(
                        listener = %client.data.listener,
                        "no worker listens there any more; a connection queued for an exited worker was closed"
                    ),
                }
            }
            if reclaimed > 0 {
                tracing::info!(
                    reclaimed,
                    "connections queued for an exited worker were passed to others"
                );
            }
        }));
    }

    /// A connection a stopping worker handed back (idle between requests, with the bytes it
    /// had read) goes to another ready worker listening on the same address; closed only
    /// when no worker listens there any more.
    pub(crate) async fn hand_over(&self, socket: OwnedFd, meta: &ClientMeta, prefix: &[u8]) {
        if self.to_successor(&socket, meta, prefix).await {
            return;
        }
        let route = self.routes().get(&meta.listener).cloned();
        match route {
            Some(route) => self.hand_off(&route, socket, meta, prefix).await,
            None => tracing::debug!(
                listener = %meta.listener,
                "a handed-back connection has no worker to go to; closed"
            ),
        }
    }

    /// The ready worker to try next, skipping those in `full`: in turn, or in least-conn
    /// mode the one with the fewest open connections, ties in turn. When every ready
    /// worker is in `full`, the next one by the same rule, flagged
    /// [`all_full`](Pick::all_full). `None` when no worker is ready.
    fn pick(&self, route: &Mutex<Route>, full: &[WorkerId]) -> Option<Pick> {
        let mut route = lock(route);
        let n = route.targets.len();
        let now = if self.least_conn {
            self.micros_since_epoch()
        } else {
            0
        };
        // (open connections, time since the last close while any is open): lower is better.
        let mut best: Option<(usize, (u64, u64))> = None;
        let mut fallback: Option<usize> = None;
        for i in 0..n {
            let index = (route.next + i) % n;
            let target = &route.targets[index];
            if !target.ready {
                continue;
            }
            fallback.get_or_insert(index);
            if full.contains(&target.id) {
                continue;
            }
            let load = if self.least_conn {
                let open = target.load.open();
                let quiet = if open == 0 {
                    0
                } else {
                    now.saturating_sub(target.load.last_close.load(Ordering::Relaxed))
                };
                (open, quiet)
            } else {
                (0, 0)
            };
            if best.is_none_or(|(_, least)| load < least) {
                best = Some((index, load));
                if load.0 == 0 {
                    break; // nobody can beat it
                }
            }
        }
        let (index, all_full) = match (best, fallback) {
            (Some((index, _)), _) => (index, false),
            (None, Some(index)) => (index, true),
            (None, None) => return None,
        };
        route.next = index + 1;
        let target = &route.targets[index];
        Some(Pick {
            id: target.id,
            pipe: target.pipe.clone(),
            load: target.load.clone(),
            all_full,
        })
    }

    async fn accept_loop(
        self: Arc<Self>,
        listener: fdpass::RawAcceptor,
        address: ListenAddress,
        route: Arc<Mutex<Route>>,
    ) {
        let mut backoff = Duration::from_millis(10);
        loop {
            // A bare descriptor: the worker sets TCP_NODELAY and registers it with its reactor.
            let (socket, peer) = match listener.accept().await {
                Ok(accepted) => {
                    backoff = Duration::from_millis(10);
                    accepted
                }
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(%address, error = %e, "round-robin accept failed; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let meta = ClientMeta {
                listener: address.clone(),
                peer,
            };
            self.hand_off(&route, socket, &meta, &[]).await;
        }
    }

    /// Hands `socket` to the next ready worker on `route` (see [`pick`](Self::pick)). An
    /// accepted connection is never dropped: it waits for a ready worker, and a failed
    /// transfer moves on to the next one; only after shutdown, with no worker left, is it
    /// closed. A worker whose queue is full (busy, or stopped and not yet past its heartbeat
    /// timeout) is passed over; only when every ready worker is full does the loop wait,
    /// briefly, on one of them, and then look again, so one stuck worker never holds up the
    /// others.
    async fn hand_off(
        &self,
        route: &Mutex<Route>,
        socket: OwnedFd,
        meta: &ClientMeta,
        prefix: &[u8],
    ) {
        if self.to_successor(&socket, meta, prefix).await {
            return;
        }
        let mut full: Vec<WorkerId> = Vec::new();
        loop {
            // Registered before looking, so a worker becoming ready in between is not missed.
            let changed = self.changed.notified();
            let Some(pick) = self.pick(route, &full) else {
                if self.closed.load(Ordering::SeqCst) {
                    return;
                }
                // No ready worker: wait until one is (the timeout only guards the unexpected).
                let _ = tokio::time::timeout(Duration::from_secs(1), changed).await;
                continue;
            };
            let sent = if pick.all_full {
                full.clear();
                // Cancelling a one-packet send leaves nothing sent and the socket ours.
                let send = pick.pipe.send_with_prefix(&socket, meta, prefix);
                match tokio::time::timeout(FULL_WAIT, send).await {
                    Ok(sent) => sent,
                    Err(_) => continue,
                }
            } else {
                pick.pipe.try_send_with_prefix(&socket, meta, prefix)
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

fn lock(route: &Mutex<Route>) -> std::sync::MutexGuard<'_, Route> {
    route.lock().unwrap_or_else(PoisonError::into_inner)
}
