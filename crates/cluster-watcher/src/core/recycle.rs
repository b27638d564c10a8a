//! Recycling: replacing a worker that is too old, too big or has served enough, through
//! the rolling-restart path, one slot at a time, its replacement ready before it drains.
//!
//! * **Age** (`max_age`): a [`Timer::MaxAge`] armed when the worker becomes ready.
//! * **Memory** (`max_memory`): the driver measures the RSS of every ready current worker's
//!   process tree when asked ([`Action::SampleMemory`](super::Action::SampleMemory), every
//!   second) and reports it ([`Supervisor::memory`]). Over its limit a worker is recycled;
//!   past 1.5 times the limit it is killed at once.
//! * **Connections** (`max_requests`): the count a `cluster-worker` program reports with its
//!   heartbeats ([`Supervisor::accepted`]).
//!
//! Each worker's limits get a spread of up to a tenth (its [`spread`], different from
//! worker to worker), so workers started together do not all recycle together.

use std::time::{Duration, Instant};

use super::{Phase, Supervisor, TICK, Timer};
use crate::{Event, KillReason, StopCause, WorkerId};

/// Why a worker is recycled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recycle {
    /// Its process tree's RSS went over the limit.
    Memory { rss: u64, limit: u64 },
    /// It ran longer than `max_age`.
    Age,
    /// It accepted `max_requests` connections.
    Requests { count: u64, limit: u64 },
}

impl std::fmt::Display for Recycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory { rss, limit } => {
                write!(f, "RSS {} MiB over {} MiB", rss >> 20, limit >> 20)
            }
            Self::Age => f.write_str("max age reached"),
            Self::Requests { count, limit } => {
                write!(f, "{count} connections accepted, limit {limit}")
            }
        }
    }
}

/// A worker over its memory limit this soon after its start counts as a strike: its
/// program cannot meet the limit, and recycling it at once would only start another.
pub(super) const MEMORY_YOUNG: Duration = Duration::from_secs(10);

/// A recycling in progress: the slot and the replacement starting in it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Recycling {
    pub(super) slot: u32,
    pub(super) new: WorkerId,
}

/// A number in `0..range` that differs from worker to worker (a hash of its slot and
/// generation): each worker's share of a limit's spread.
pub(crate) fn spread(id: WorkerId, range: u64) -> u64 {
    if range == 0 {
        return 0;
    }
    let mut x = u64::from(id.slot).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ u64::from(id.generation).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 33;
    x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    x ^= x >> 33;
    x % range
}

/// `limit` plus `id`'s share of a tenth more.
fn own_limit(id: WorkerId, limit: u64) -> u64 {
    limit.saturating_add(spread(id, limit / 10))
}

impl Supervisor {
    /// Replaces the slot's current worker `id` for `why`: its replacement starts, and once
    /// it is ready `id` drains. Refused (`false`) while the slot is being replaced already (a
    /// rolling restart, another recycling) or `restart_parallelism` slots are; the caller
    /// asks again.
    pub(crate) fn recycle(&mut self, id: WorkerId, why: Recycle, now: Instant) -> bool {
        let slot = id.slot;
        let current = self
            .slots
            .contains(slot)
            .then(|| self.slots[slot].current)
            .flatten();
        if current != Some(id)
            || self.phase(id) != Some(Phase::Ready)
            || !self.running
            || self.replacing(slot)
            || self.draining_in(slot)
            || self.recycling.len() >= self.config.restart_parallelism.max(1)
        {
            return false;
        }
        self.emit(Event::Recycling {
            id,
            reason: why.to_string(),
        });
        let new = self.spawn_in_slot(slot, false, now);
        self.recycling.push(Recycling { slot, new });
        true
    }

    /// What the driver measured: the RSS of `id`'s process tree. Over its limit it is
    /// recycled; past 1.5 times the limit, killed now. A worker over the limit within
    /// [`MEMORY_YOUNG`] of its start is a strike against its slot: recycling it (or starting
    /// the next after a kill) waits a backoff that doubles with each strike in a row, and
    /// at the third the limit is said to be unmeetable ([`Event::MemoryLimitUnmet`]).
    pub(crate) fn memory(&mut self, id: WorkerId, rss: u64, now: Instant) {
        self.advance(now);
        let Some(limit) = self.config.max_memory else {
            return;
        };
        let Some(started) = self.workers.get(&id).map(|w| w.started) else {
            return;
        };
        let young = now.saturating_duration_since(started) < MEMORY_YOUNG;
        let own = own_limit(id, limit);
        let over = rss >= own;
        if over && young {
            self.memory_strike(id, rss, own, now);
        } else if !over && !young {
            self.slots[id.slot].memory_strikes = 0;
        }
        if rss >= limit.saturating_add(limit / 2) {
            self.kill(id, KillReason::MemoryCeiling, now);
        } else if over && self.memory_hold(id.slot, now).is_zero() {
            self.recycle(id, Recycle::Memory { rss, limit: own }, now);
        }
    }

    /// One more worker of `id`'s slot over the limit young: the slot waits longer before
    /// the next recycling.
    fn memory_strike(&mut self, id: WorkerId, rss: u64, limit: u64, now: Instant) {
        let (initial, max) = (self.config.backoff_initial, self.config.backoff_max);
        let slot = &mut self.slots[id.slot];
        if slot.memory_struck == Some(id) {
            return; // the same worker, sampled again: one strike
        }
        slot.memory_struck = Some(id);
        slot.memory_strikes += 1;
        // As the respawn backoff: the first is recycled at once (a fluke, perhaps), each
        // further one in a row waits twice as long as the last.
        let hold = match slot.memory_strikes {
            1 => Duration::ZERO,
            strikes => (initial * 2u32.pow((strikes - 2).min(16))).min(max),
        };
        slot.memory_hold = Some(now + hold);
        if slot.memory_strikes == 3 {
            self.emit(Event::MemoryLimitUnmet {
                slot: id.slot,
                rss,
                limit,
                backoff: hold,
            });
        }
    }

    /// How long the slot still waits before a worker is recycled for memory again.
    pub(super) fn memory_hold(&self, slot: u32, now: Instant) -> Duration {
        self.slots[slot]
            .memory_hold
            .map_or(Duration::ZERO, |until| until.saturating_duration_since(now))
    }

    /// Connections `id` accepted so far; at `max_requests` (plus its spread) it is recycled.
    pub(crate) fn accepted(&mut self, id: WorkerId, total: u64, now: Instant) {
        self.advance(now);
        let Some(worker) = self.workers.get_mut(&id) else {
            return;
        };
        worker.accepted = Some(total);
        if let Some(limit) = self.config.max_requests {
            let own = own_limit(id, limit);
            if total >= own {
                let why = Recycle::Requests {
                    count: total,
                    limit: own,
                };
                self.recycle(id, why, now);
            }
        }
    }

    /// `max_age`: arms the worker's age limit (plus its spread of `recycle_jitter`).
    pub(super) fn arm_max_age(&mut self, id: WorkerId, started: Instant) {
        if let Some(max_age) = self.config.max_age {
            let jitter = self.config.recycle_jitter.as_millis();
            let extra = spread(id, u64::try_from(jitter).unwrap_or(u64::MAX));
            let at = started + max_age + Duration::from_millis(extra);
            self.timers.set(Timer::MaxAge(id), at);
        }
    }

    /// `id` reached its age limit: recycled, or asked again shortly if its slot (or the
    /// parallelism) is busy.
    pub(super) fn recycle_old(&mut self, id: WorkerId, now: Instant) {
        if self.phase(id) != Some(Phase::Ready) || !self.running {
            return;
        }
        let current = self.slots.contains(id.slot) && self.slots[id.slot].current == Some(id);
        if current && !self.recycle(id, Recycle::Age, now) {
            self.timers.set(Timer::MaxAge(id), now + TICK);
        }
    }

    /// Whether `id` is a recycling replacement; if it became ready, it takes over.
    pub(super) fn recycled_ready(&mut self, id: WorkerId, now: Instant) -> bool {
        let Some(index) = self.recycling.iter().position(|r| r.new == id) else {
            return false;
        };
        let recycling = self.recycling.remove(index);
        let slot = &mut self.slots[recycling.slot];
        let old = slot.current.replace(id);
        slot.restarts.recycled += 1;
        if let Some(old) = old {
            self.stop_worker(old, StopCause::Recycled, now);
        }
        true
    }

    /// A recycling replacement failed: the old worker keeps serving (and is asked again).
    pub(super) fn recycling_failed(&mut self, id: WorkerId) {
        self.recycling.retain(|r| r.new != id);
    }

    /// Whether a replacement for `slot` is starting (rolling restart or recycling).
    pub(super) fn replacing(&self, slot: u32) -> bool {
        self.rolling.replaces(slot) || self.recycling.iter().any(|r| r.slot == slot)
    }
}
