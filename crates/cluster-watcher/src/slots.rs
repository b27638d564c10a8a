//! `reuseport` mode: which slots take new connections, and when a slot's worker may be
//! stopped.
//!
//! * A slot is **live** while the cluster wants it and one of its workers is ready; only live
//!   slots get new connections ([`Steering`] attaches the program).
//! * A worker to be stopped while other slots are live is **drained** first: its slot stops
//!   getting new connections, and the worker is asked to stop once the slot's accept queue
//!   has stayed empty for [`DRAIN_QUIET`] (150 ms; at most [`DRAIN_LIMIT`]). A slot being
//!   scaled away then closes with nothing queued (a close resets its queue), and a program
//!   that drops the connections it accepted but had not read when its stop signal came
//!   (uvicorn, hypercorn, axum's graceful shutdown do) has none left to drop. In a rolling
//!   restart the slot's new worker shares the socket and takes new connections again once
//!   the old one was told.
//! * A live slot whose queue holds connections and has not shrunk for [`STALL_AFTER`] is
//!   **stalled**: its worker reports ready (or heartbeats) but does not accept, because it is
//!   still starting (a `--ready-after` guess that came too early), overloaded or stuck. It
//!   gets no new connections until its queue shrinks; a warning says so. The kernel's
//!   spread is blind to load (Cloudflare's observation about `SO_REUSEPORT`); this is the
//!   watcher's remedy, from the accept queues alone.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use cluster_ipc::ServerSocketProvider;

use crate::steering::{Steering, queued_by_slot};
use crate::{ClusterStatus, WorkerId, WorkerPhase};

/// How long a slot's accept queue may take to empty before its worker is asked to stop
/// anyway.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);

/// How long a slot's queue must stay empty before its worker is asked to stop: time for the
/// worker to read the requests of the connections it accepted last. 50 ms was seen short
/// once in about a dozen runs for a debug-built axum server on a loaded machine (it closed
/// a connection it had accepted but not read); a restart barely notices 150.
const DRAIN_QUIET: Duration = Duration::from_millis(150);

/// How long a live slot's queue may hold connections without shrinking before the slot gets
/// no new ones.
const STALL_AFTER: Duration = Duration::from_millis(200);

/// How often the queues are looked at: the driver wakes this often in reuseport mode.
pub(crate) const POLL: Duration = Duration::from_millis(20);

/// A worker waiting for its slot's queue to empty before it is asked to stop.
#[derive(Debug)]
struct Draining {
    id: WorkerId,
    deadline: Instant,
    /// Since when the queue has been seen empty.
    empty_since: Option<Instant>,
}

/// One live slot's queue, as last seen.
#[derive(Debug, Default)]
struct QueueTrend {
    last: u32,
    /// Since when it has held connections without shrinking.
    stuck_since: Option<Instant>,
    stalled: bool,
}

/// The reuseport slots' state: the steering program, the drains, the queues.
#[derive(Debug, Default)]
pub(crate) struct Slots {
    steering: Steering,
    draining: Vec<Draining>,
    queues: HashMap<u32, QueueTrend>,
}

impl Slots {
    /// Whether the driver should hold `id`'s stop until its slot is drained; if so it is
    /// recorded, and new connections steered away at once.
    pub(crate) fn drain_first(
        &mut self,
        id: WorkerId,
        status: &ClusterStatus,
        provider: &ServerSocketProvider,
        now: Instant,
    ) -> bool {
        if self.draining.iter().any(|d| d.id == id) {
            return false;
        }
        let others_live = self.live(status).iter().any(|&s| s != id.slot);
        if !others_live {
            return false;
        }
        self.draining.push(Draining {
            id,
            deadline: now + DRAIN_LIMIT,
            empty_since: None,
        });
        self.steer(status, provider);
        true
    }

    /// `id` exited: no drain waits for it any more.
    pub(crate) fn exited(&mut self, id: WorkerId) {
        self.draining.retain(|d| d.id != id);
    }

    /// Looks at the queues: returns the drained workers to stop now, and re-steers when a
    /// slot stalled or recovered.
    pub(crate) fn poll(
        &mut self,
        status: &ClusterStatus,
        provider: &ServerSocketProvider,
        now: Instant,
    ) -> Vec<WorkerId> {
        let queues = queued_by_slot(provider);
        let queued_in = |slot: u32| queues.get(&slot).copied().unwrap_or(0);
        let mut done = Vec::new();
        self.draining.retain_mut(|draining| {
            let queued = queued_in(draining.id.slot);
            if queued == 0 {
                let since = *draining.empty_since.get_or_insert(now);
                if now.duration_since(since) >= DRAIN_QUIET {
                    done.push(draining.id);
                    return false;
                }
            } else {
                draining.empty_since = None;
            }
            if now >= draining.deadline {
                tracing::warn!(
                    worker = draining.id.slot,
                    queued,
                    "the slot's queue did not empty in time; stopping its worker anyway"
                );
                done.push(draining.id);
                return false;
            }
            true
        });
        if self.watch_queues(status, &queues, now) || !done.is_empty() {
            self.steer(status, provider);
        }
        done
    }

    /// Updates each ready slot's queue trend; whether a slot stalled or recovered.
    fn watch_queues(
        &mut self,
        status: &ClusterStatus,
        queues: &HashMap<u32, u32>,
        now: Instant,
    ) -> bool {
        let ready = ready_slots(status);
        self.queues.retain(|slot, _| ready.contains(slot));
        let mut changed = false;
        for slot in ready {
            let queued = queues.get(&slot).copied().unwrap_or(0);
            let trend = self.queues.entry(slot).or_default();
            if queued == 0 || queued < trend.last {
                trend.stuck_since = None;
                if trend.stalled {
                    trend.stalled = false;
                    changed = true;
                    tracing::info!(
                        worker = slot,
                        queued,
                        "the slot accepts again; it gets new connections"
                    );
                }
            } else {
                let since = *trend.stuck_since.get_or_insert(now);
                if !trend.stalled && now.duration_since(since) >= STALL_AFTER {
                    trend.stalled = true;
                    changed = true;
                    tracing::warn!(
                        worker = slot,
                        queued,
                        "the slot's worker is ready but its queue does not shrink (starting, overloaded, stuck, or a program ignoring the inherited descriptor and binding its own port): it gets no new connections until it does"
                    );
                }
            }
            trend.last = queued;
        }
        changed
    }

    /// Live slots, less the draining and the stalled.
    fn live(&self, status: &ClusterStatus) -> BTreeSet<u32> {
        let mut live = ready_slots(status);
        for draining in &self.draining {
            live.remove(&draining.id.slot);
        }
        for (slot, trend) in &self.queues {
            if trend.stalled {
                live.remove(slot);
            }
        }
        live
    }

    /// Steers new connections onto the slots that can take them now.
    pub(crate) fn steer(&mut self, status: &ClusterStatus, provider: &ServerSocketProvider) {
        let live = self.live(status);
        self.steering.update(provider, &live);
    }

    /// Whether the queues need looking at soon (the driver wakes every [`POLL`]).
    pub(crate) fn busy(&self, status: &ClusterStatus) -> bool {
        !self.draining.is_empty() || !ready_slots(status).is_empty()
    }
}

/// Slots the cluster wants whose worker (of either generation) is ready.
fn ready_slots(status: &ClusterStatus) -> BTreeSet<u32> {
    status
        .slots
        .iter()
        .filter(|s| s.wanted && s.workers.iter().any(|w| w.phase == WorkerPhase::Ready))
        .map(|s| s.slot)
        .collect()
}
