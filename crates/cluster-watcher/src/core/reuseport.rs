//! `reuseport` mode: which slots take new connections, and when a slot's worker may be
//! stopped.
//!
//! * A slot is **live** while the cluster wants it and one of its workers is ready; only live
//!   slots get new connections ([`Action::Steer`]; the driver attaches the program).
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
//! * A program given listeners shares its slot's socket with the slot's next worker, and
//!   may go on accepting on it for a moment after its stop signal (uvicorn notices the
//!   signal at its next 100 ms tick, then closes what it accepted meanwhile, unread). So a
//!   drained worker is **released** before its slot gets new connections again: once it is
//!   seen no longer waiting on the listener ([`Action::Observe`], every [`POLL`]), or gone,
//!   or after [`RELEASE_LIMIT`].
//! * A slot scaled away whose last process is gone gives up its sockets
//!   ([`Action::ReleaseSlot`]).
//!
//! The queues are read by the driver when asked ([`Action::PollQueues`], every [`POLL`]
//! while a slot is live or draining) and reported with [`Supervisor::queues`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use super::{Action, Phase, Supervisor, Timer};
use crate::WorkerId;

/// How long a slot's accept queue may take to empty before its worker is asked to stop
/// anyway.
pub(super) const DRAIN_LIMIT: Duration = Duration::from_secs(1);

/// How long a slot's queue must stay empty before its worker is asked to stop: time for the
/// worker to read the requests of the connections it accepted last. 50 ms was seen short
/// once in about a dozen runs for a debug-built axum server on a loaded machine (it closed
/// a connection it had accepted but not read); a restart barely notices 150.
pub(super) const DRAIN_QUIET: Duration = Duration::from_millis(150);

/// How long a live slot's queue may hold connections without shrinking before the slot gets
/// no new ones.
pub(super) const STALL_AFTER: Duration = Duration::from_millis(200);

/// How often the queues are looked at while a slot is live or draining.
pub(super) const POLL: Duration = Duration::from_millis(20);

/// How long a stopped program may keep its slot from new connections while it is still
/// seen waiting on the listener.
pub(super) const RELEASE_LIMIT: Duration = Duration::from_secs(1);

/// A drained program asked to stop, still seen waiting on its slot's listener.
#[derive(Debug)]
struct Releasing {
    id: WorkerId,
    since: Instant,
}

/// A worker waiting for its slot's queue to empty before it is asked to stop.
#[derive(Debug)]
struct Draining {
    id: WorkerId,
    /// Since when the queue has been seen empty.
    empty_since: Option<Instant>,
    /// Waiting for another slot to be live before its own drain begins (its slot takes new
    /// connections meanwhile).
    waiting: bool,
}

/// One live slot's queue, as last seen.
#[derive(Debug, Default)]
struct QueueTrend {
    last: u32,
    /// Since when it has held connections without shrinking.
    stuck_since: Option<Instant>,
    stalled: bool,
}

/// The reuseport state of a [`Supervisor`].
#[derive(Debug, Default)]
pub(super) struct Reuseport {
    /// Reuseport mode, and no successor watcher took the sockets over.
    enabled: bool,
    draining: Vec<Draining>,
    releasing: Vec<Releasing>,
    queues: BTreeMap<u32, QueueTrend>,
    /// The live slots last steered to (`None`: steer at the next chance).
    steered: Option<BTreeSet<u32>>,
    /// Something that decides the live slots changed since the last steering.
    dirty: bool,
}

impl Reuseport {
    pub(super) fn new(enabled: bool) -> Self {
        Self {
            enabled,
            ..Self::default()
        }
    }

    pub(super) fn enabled(&self) -> bool {
        self.enabled
    }

    /// The live slots may have changed.
    pub(super) fn touch(&mut self) {
        self.dirty = true;
    }

    /// Whether `id` waits for its slot to drain.
    fn is_draining(&self, id: WorkerId) -> bool {
        self.draining.iter().any(|d| d.id == id)
    }

    /// Live slots: ready, less the draining, the releasing and the stalled.
    fn live(&self, mut ready: BTreeSet<u32>) -> BTreeSet<u32> {
        for draining in self.draining.iter().filter(|d| !d.waiting) {
            ready.remove(&draining.id.slot);
        }
        for releasing in &self.releasing {
            ready.remove(&releasing.id.slot);
        }
        for (slot, trend) in &self.queues {
            if trend.stalled {
                ready.remove(slot);
            }
        }
        ready
    }

    /// Each ready slot's queue trend updated; whether a slot stalled or recovered.
    fn watch_queues(
        &mut self,
        ready: &BTreeSet<u32>,
        queues: &HashMap<u32, u32>,
        now: Instant,
    ) -> bool {
        self.queues.retain(|slot, _| ready.contains(slot));
        let mut changed = false;
        for &slot in ready {
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

    /// The drains whose queue stayed empty long enough.
    fn drained(&mut self, queues: &HashMap<u32, u32>, now: Instant) -> Vec<WorkerId> {
        let mut done = Vec::new();
        self.draining.retain_mut(|draining| {
            if draining.waiting {
                return true;
            }
            if queues.get(&draining.id.slot).copied().unwrap_or(0) > 0 {
                draining.empty_since = None;
                return true;
            }
            let since = *draining.empty_since.get_or_insert(now);
            if now.duration_since(since) >= DRAIN_QUIET {
                done.push(draining.id);
                return false;
            }
            true
        });
        done
    }
}

impl Supervisor {
    /// Slots the cluster wants whose worker (of either generation) is ready.
    fn ready_slots(&self) -> BTreeSet<u32> {
        self.workers
            .iter()
            .filter(|(id, w)| {
                w.phase == Phase::Ready
                    && self.slots.contains(id.slot)
                    && self.slots[id.slot].wanted
            })
            .map(|(id, _)| id.slot)
            .collect()
    }

    /// Whether `id`'s stop waits for its slot to drain; if so it is recorded, new
    /// connections are steered away at once, and [`DRAIN_LIMIT`] bounds the wait.
    pub(super) fn drain_first(&mut self, id: WorkerId, now: Instant) -> bool {
        if !self.reuseport.enabled || self.reuseport.is_draining(id) {
            return false;
        }
        let live = self.reuseport.live(self.ready_slots());
        let others_live = live.iter().any(|&slot| slot != id.slot);
        // Another slot draining or being released is live again shortly (a rolling restart
        // replacing two at once): this one waits for it instead of being stopped while its
        // slot still takes connections.
        // Only while the cluster runs and wants this slot: a stop or a scale-down leaves no
        // slot to become live again.
        let slot_wanted = self.slots.contains(id.slot) && self.slots[id.slot].wanted;
        let others_draining = self
            .reuseport
            .draining
            .iter()
            .any(|d| !d.waiting && d.id.slot != id.slot);
        let others_releasing = self
            .reuseport
            .releasing
            .iter()
            .any(|r| r.id.slot != id.slot);
        let others_soon = self.running && slot_wanted && (others_draining || others_releasing);
        if !others_live && !others_soon {
            return false;
        }
        self.reuseport.draining.push(Draining {
            id,
            empty_since: None,
            waiting: !others_live,
        });
        self.reuseport.dirty = true;
        // Waiting or draining, the stop signal goes out within DRAIN_LIMIT of this (and at
        // most DRAIN_LIMIT after a wait ends): the shutdown timeout runs already.
        self.timers.set(Timer::DrainLimit(id), now + DRAIN_LIMIT);
        self.timers.set_if_unset(Timer::PollQueues, now + POLL);
        true
    }

    /// Begins the drains that waited for another slot to be live, one at a time.
    fn begin_waiting_drains(&mut self, now: Instant) {
        while let Some(position) = self.reuseport.draining.iter().position(|d| d.waiting) {
            let slot = self.reuseport.draining[position].id.slot;
            let live = self.reuseport.live(self.ready_slots());
            if !live.iter().any(|&s| s != slot) {
                return;
            }
            let draining = &mut self.reuseport.draining[position];
            draining.waiting = false;
            self.timers
                .set(Timer::DrainLimit(draining.id), now + DRAIN_LIMIT);
            self.reuseport.dirty = true;
        }
    }

    /// The slot's queue did not empty in time: its worker is asked to stop anyway.
    pub(super) fn drain_limit(&mut self, id: WorkerId, now: Instant) {
        if !self.reuseport.is_draining(id) {
            return;
        }
        tracing::warn!(
            worker = id.slot,
            "the slot's queue did not empty in time; stopping its worker anyway"
        );
        self.reuseport.draining.retain(|d| d.id != id);
        self.reuseport.dirty = true;
        self.stop_drained(id, now);
    }

    /// A drained worker is asked to stop; a program keeps its slot from new connections
    /// until it is released.
    fn stop_drained(&mut self, id: WorkerId, now: Instant) {
        self.push_stop(id);
        if self.config.program_mode() {
            self.reuseport.releasing.push(Releasing { id, since: now });
            self.timers.set_if_unset(Timer::PollQueues, now + POLL);
        }
    }

    /// What was seen of `id`, if it is being released: released unless it still waits on
    /// the listener. Whether `id` was being released (the observation is then used up).
    pub(super) fn release_observed(&mut self, id: WorkerId, listening: bool) -> bool {
        let Some(position) = self.reuseport.releasing.iter().position(|r| r.id == id) else {
            return false;
        };
        if !listening {
            self.reuseport.releasing.remove(position);
            self.reuseport.dirty = true;
        }
        true
    }

    /// Asks the driver to look at the workers being released; releases those past
    /// [`RELEASE_LIMIT`].
    fn look_at_releasing(&mut self, now: Instant) {
        let before = self.reuseport.releasing.len();
        self.reuseport
            .releasing
            .retain(|r| now.duration_since(r.since) < RELEASE_LIMIT);
        if self.reuseport.releasing.len() != before {
            self.reuseport.dirty = true;
            tracing::debug!(
                "a stopped worker still waited on its slot's listener after {RELEASE_LIMIT:?}; its slot takes new connections again"
            );
        }
        for releasing in &self.reuseport.releasing {
            if let Some(worker) = self.workers.get(&releasing.id) {
                let (id, pid) = (releasing.id, worker.pid);
                self.actions.push_back(Action::Observe { id, pid });
            }
        }
    }

    /// Reuseport: asks the driver for the queues while a slot is live or draining.
    pub(super) fn poll_queues(&mut self, now: Instant) {
        if !self.reuseport.enabled {
            return;
        }
        let busy = !self.reuseport.draining.is_empty()
            || !self.reuseport.releasing.is_empty()
            || !self.ready_slots().is_empty();
        if busy {
            self.actions.push_back(Action::PollQueues);
        }
        self.look_at_releasing(now);
        if busy || self.running {
            self.timers.set(Timer::PollQueues, now + POLL);
        }
    }

    /// What the driver read: connections waiting in each slot's accept queues. Drained
    /// workers are asked to stop; a slot that stalled or recovered is steered anew.
    pub(crate) fn queues(&mut self, queued: &HashMap<u32, u32>, now: Instant) {
        self.advance(now);
        if !self.reuseport.enabled {
            return;
        }
        let done = self.reuseport.drained(queued, now);
        let ready = self.ready_slots();
        if self.reuseport.watch_queues(&ready, queued, now) || !done.is_empty() {
            self.reuseport.dirty = true;
        }
        for id in done {
            self.timers.stop(Timer::DrainLimit(id));
            self.stop_drained(id, now);
        }
        self.begin_waiting_drains(now);
    }

    /// `id` exited: no drain waits for it any more, and a slot scaled away may be gone.
    pub(super) fn reuseport_exited(&mut self, id: WorkerId) {
        self.reuseport.draining.retain(|d| d.id != id);
        // Gone: it cannot accept any more.
        self.release_observed(id, false);
        self.release_slot_if_gone(id.slot);
    }

    /// A slot scaled away whose last process is gone gives up its sockets (its reuseport
    /// sockets, and in any mode its `udp://` ones).
    pub(super) fn release_slot_if_gone(&mut self, slot: u32) {
        let wanted = self.slots.contains(slot) && self.slots[slot].wanted;
        if !wanted && !self.workers.keys().any(|id| id.slot == slot) {
            self.actions.push_back(Action::ReleaseSlot(slot));
            if self.reuseport.enabled {
                // The group's order changed: the program must be attached anew.
                self.reuseport.steered = None;
                self.reuseport.dirty = true;
            }
        }
    }

    /// A successor watcher took the sockets over: it steers them from now on, and drains
    /// waiting here stop at once.
    pub(crate) fn handed_over(&mut self, now: Instant) {
        self.advance(now);
        self.reuseport.enabled = false;
        self.reuseport.releasing.clear();
        for draining in std::mem::take(&mut self.reuseport.draining) {
            self.timers.stop(Timer::DrainLimit(draining.id));
            self.push_stop(draining.id);
        }
    }

    /// The live slots to steer to, when they changed since the last steering.
    pub(super) fn steering(&mut self) -> Option<BTreeSet<u32>> {
        if !self.reuseport.enabled || !std::mem::take(&mut self.reuseport.dirty) {
            return None;
        }
        let live = self.reuseport.live(self.ready_slots());
        if self.reuseport.steered.as_ref() == Some(&live) {
            return None;
        }
        self.reuseport.steered = Some(live.clone());
        Some(live)
    }
}
