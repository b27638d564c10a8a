//! The watcher's accept loop in the hand-off modes: one thread per listening address,
//! blocked in `accept()`.
//!
//! Why a thread: a blocking `accept` is one system call per connection, with the wait
//! inside it; an event loop adds a readiness wait (`epoll_wait`, `poll`) and an `accept`
//! that finds the queue empty. Measured (BENCHMARKS.md, "The hand-off modes"), that wait
//! is most of what separated the watcher from a hand-written blocking parent: 10.2 µs of
//! system time per connection for the blocking one, 12.4 with tokio, 13.2 with `poll`.
//!
//! The thread hands each connection on itself when it can: the picked worker's queue has
//! room and nothing needs the runtime (no successor watcher, no request head to read for a
//! hash key). Everything else (a full or gone worker, no ready worker, a key in the
//! request) goes over a bounded channel to a task that runs the async
//! [`dispatch`](Balancer::dispatch); when that is full, the thread waits, and new
//! connections wait in the listen backlog where the kernel bounds them.
//!
//! The thread never changes the socket's flags: they belong to its open file description,
//! which every copy shares, and a copy may be in another process. The sockets the watcher
//! binds for the hand-off modes are blocking from the start (no worker ever gets a copy:
//! the provider answers with the address only), and the periodic flag check
//! (`driver/listeners.rs`) leaves them so. An inherited one (socket activation, or a
//! predecessor watcher whose workers accepted on it) is non-blocking: there the thread
//! waits with `poll`, as an event loop would, and never blocks anyone else's `accept`.
//!
//! Connections are accepted non-blocking, which is what the watcher vouches for to its
//! workers (they skip the check and the `ioctl`, `CLUSTER_CLIENTS_VOUCHED`).
//!
//! Stopping: nothing interrupts a blocked `accept` but a connection, so [`Acceptor::stop`]
//! connects to the socket (from a short-lived thread, a few times if another process
//! accepting on the same socket takes the connection) until the thread has gone. A
//! connection accepted after the stop still goes through the channel: to the successor
//! watcher after an upgrade, closed after a release or a shutdown (as before: no worker
//! listens there any more).

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cluster_ipc::ListenAddress;
use cluster_ipc::protocol::ClientMeta;
use parking_lot::Mutex;
use rustix::io::Errno;
use rustix::net::{SocketAddrAny, SocketFlags};
use tokio::sync::mpsc;

use super::handoff::{Balancer, Route};
use crate::task::spawn_in;

/// Connections waiting for the async path; past it the thread waits.
const CHANNEL: usize = 256;
/// How long a non-blocking socket's `poll` waits before looking at the stop flag again.
const POLL_WAIT: Duration = Duration::from_millis(100);
/// How many connections [`Acceptor::stop`] makes, at most, before giving up on the thread.
const WAKE_TRIES: u32 = 20;

/// One address's accept thread.
#[derive(Debug)]
pub(crate) struct Acceptor {
    /// Shared with the thread, which looks at it after every connection.
    state: Arc<State>,
    /// Where a connection wakes the thread; `None` when the address cannot be read.
    wake_at: Option<SocketAddrAny>,
    /// The task running [`Balancer::dispatch`] for what the thread cannot hand on itself.
    dispatcher: tokio::task::AbortHandle,
}

#[derive(Debug, Default)]
struct State {
    stop: AtomicBool,
    exited: AtomicBool,
    /// The address the latest waking connection comes from (IP sockets).
    waker: Mutex<Option<std::net::SocketAddr>>,
}

/// What the thread needs.
struct Accepting {
    balancer: Arc<Balancer>,
    listener: OwnedFd,
    address: ListenAddress,
    route: Arc<Mutex<Route>>,
    to_dispatch: mpsc::Sender<(OwnedFd, ClientMeta)>,
    state: Arc<State>,
}

impl Acceptor {
    /// Starts accepting on `listener` (a duplicate; the thread closes it when it ends) for
    /// `route`. Must be called inside the watcher's runtime (the dispatching task).
    pub(crate) fn start(
        balancer: &Arc<Balancer>,
        listener: OwnedFd,
        address: &ListenAddress,
        route: Arc<Mutex<Route>>,
    ) -> std::io::Result<Self> {
        let wake_at = rustix::net::getsockname(&listener).ok();
        let (to_dispatch, mut queued) = mpsc::channel::<(OwnedFd, ClientMeta)>(CHANNEL);
        let dispatcher = {
            let (balancer, route) = (balancer.clone(), route.clone());
            spawn_in(balancer.span.clone(), async move {
                while let Some((socket, meta)) = queued.recv().await {
                    balancer.dispatch(&route, socket, meta, Vec::new()).await;
                }
            })
        };
        let state = Arc::new(State::default());
        let accepting = Accepting {
            balancer: balancer.clone(),
            listener,
            address: address.clone(),
            route,
            to_dispatch,
            state: state.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name("cluster-accept".into())
            .spawn(move || accepting.run());
        if let Err(e) = spawned {
            dispatcher.abort();
            return Err(e);
        }
        let dispatcher_handle = dispatcher.abort_handle();
        balancer.track(dispatcher);
        Ok(Self {
            state,
            wake_at,
            dispatcher: dispatcher_handle,
        })
    }

    /// Stops the thread; connections it still accepts go on to the dispatching task (the
    /// successor watcher's, after an upgrade).
    pub(crate) fn stop(&self) {
        if self.state.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        let Some(address) = self.wake_at.clone() else {
            tracing::warn!(
                "the accept thread's address is unknown; it stops at its next connection"
            );
            return;
        };
        let state = self.state.clone();
        let waker = std::thread::Builder::new()
            .name("cluster-accept-wake".into())
            .spawn(move || wake(&address, &state));
        if let Err(e) = waker {
            tracing::warn!(error = %e, "cannot wake the accept thread; it stops at its next connection");
        }
    }

    /// Stops the thread and the dispatching task: connections not handed on yet are closed
    /// (the address is released, or the cluster is shutting down).
    pub(crate) fn close(&self) {
        self.dispatcher.abort();
        self.stop();
    }
}

/// Connects to `address` until the accept thread has gone (each connection wakes one
/// thread blocked in `accept` on that socket, maybe another process's).
fn wake(address: &SocketAddrAny, state: &State) {
    for _ in 0..WAKE_TRIES {
        if state.exited.load(Ordering::SeqCst) {
            return;
        }
        if let Err(e) = connect(address, state) {
            tracing::debug!(error = %e, "waking the accept thread failed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if !state.exited.load(Ordering::SeqCst) {
        tracing::warn!("the accept thread did not wake; it stops at its next connection");
    }
}

/// One connection to a listening socket, bounded in time; an unspecified address (bound
/// to every interface) is reached on loopback. Its own address goes to `state` first, so
/// the thread it wakes closes it instead of handing it on.
fn connect(address: &SocketAddrAny, state: &State) -> std::io::Result<()> {
    let mut target = address.clone();
    let socket = rustix::net::socket_with(
        address.address_family(),
        rustix::net::SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    if let Ok(mut ip) = std::net::SocketAddr::try_from(address.clone()) {
        if ip.ip().is_unspecified() {
            ip.set_ip(match ip {
                std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        rustix::net::bind(&socket, &std::net::SocketAddr::new(ip.ip(), 0))?;
        let local = rustix::net::getsockname(&socket)?;
        *state.waker.lock() = std::net::SocketAddr::try_from(local).ok();
        target = SocketAddrAny::from(ip);
    }
    rustix::net::sockopt::set_socket_timeout(
        &socket,
        rustix::net::sockopt::Timeout::Send,
        Some(Duration::from_millis(500)),
    )?;
    Ok(rustix::net::connect(&socket, &target)?)
}

impl Accepting {
    fn run(self) {
        let span = self.balancer.span.clone();
        let _entered = span.enter();
        let mut backoff = Duration::from_millis(10);
        while !self.state.stop.load(Ordering::SeqCst) {
            match rustix::net::acceptfrom_with(
                &self.listener,
                SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            ) {
                Ok((socket, peer)) => {
                    backoff = Duration::from_millis(10);
                    let peer = peer.and_then(|p| std::net::SocketAddr::try_from(p).ok());
                    if !self.hand_on(socket, peer) {
                        break; // the dispatching task is gone: shutting down
                    }
                }
                Err(Errno::AGAIN) => {
                    // A non-blocking socket (inherited): wait as an event loop would.
                    let mut fds = [rustix::event::PollFd::new(
                        &self.listener,
                        rustix::event::PollFlags::IN,
                    )];
                    let wait = rustix::event::Timespec::try_from(POLL_WAIT).ok();
                    let _ = rustix::event::poll(&mut fds, wait.as_ref());
                }
                Err(Errno::INTR | Errno::CONNABORTED) => {}
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(address = %self.address, error = %e, "accept failed; retrying in {backoff:?}");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
        self.state.exited.store(true, Ordering::SeqCst);
    }

    /// Hands `socket` to a worker at once, or to the dispatching task; `false` when that
    /// task is gone (the connection is closed).
    fn hand_on(&self, socket: OwnedFd, peer: Option<std::net::SocketAddr>) -> bool {
        let meta = ClientMeta {
            listener: self.address.clone(),
            peer,
        };
        let stopping = self.state.stop.load(Ordering::SeqCst);
        if stopping && peer.is_some() && peer == *self.state.waker.lock() {
            return true; // only the wake: closed
        }
        let socket = match stopping {
            true => socket,
            false => match self.balancer.try_hand_off(&self.route, socket, &meta) {
                Ok(()) => return true,
                Err(socket) => socket,
            },
        };
        self.to_dispatch.blocking_send((socket, meta)).is_ok()
    }
}

impl Balancer {
    /// Whether the watcher accepts every connection itself (round-robin, least-conn,
    /// hash): no worker holds a copy of a listening socket, and the accept threads keep
    /// them blocking.
    pub(crate) fn accepts(&self) -> bool {
        self.accepts
    }

    /// The accept thread's fast path: `socket` goes to the picked worker if its queue has
    /// room and the pick needs nothing from the runtime; otherwise it is returned.
    fn try_hand_off(
        &self,
        route: &Mutex<Route>,
        socket: OwnedFd,
        meta: &ClientMeta,
    ) -> Result<(), OwnedFd> {
        if self.successor.get().is_some() {
            return Err(socket);
        }
        let Ok(key) = self.key_without_reading(meta, &[]) else {
            return Err(socket); // the head must be read first
        };
        let Some(pick) = self.pick(route, &[], key) else {
            return Err(socket);
        };
        match pick.pipe.try_send_with_prefix(socket, meta, &[]) {
            Ok(()) => {
                pick.load.sent.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(failed) => Err(failed.socket),
        }
    }
}
