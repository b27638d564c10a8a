//! Recycling: replacing a worker that is too old or too big through the rolling-restart
//! path, one slot at a time, its replacement ready before it drains.

use std::time::{Duration, Instant};

use super::{Phase, Supervisor};
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

/// A recycling in progress: the slot and the replacement starting in it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Recycling {
    pub(super) slot: u32,
    pub(super) new: WorkerId,
}

/// A spread in `0..jitter` that differs from worker to worker, so workers started together
/// do not all reach a limit together.
pub(crate) fn jitter(id: WorkerId, jitter: Duration) -> Duration {
    if jitter.is_zero() {
        return Duration::ZERO;
    }
    let mut x = u64::from(id.slot).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ u64::from(id.generation).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 33;
    x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    x ^= x >> 33;
    Duration::from_nanos(x % jitter.as_nanos().max(1) as u64)
}

impl Supervisor {
    /// Replaces the slot's current worker `id` for `why`: its replacement starts, and once
    /// it is ready `id` drains. Ignored while the slot is being replaced already (a rolling
    /// restart, another recycling) or `restart_parallelism` slots are; the caller asks again.
    pub(crate) fn recycle(&mut self, id: WorkerId, why: Recycle, now: Instant) {
        self.advance(now);
        let slot = id.slot;
        let current = self.slots.get(slot as usize - 1).and_then(|s| s.current);
        let ready = self
            .workers
            .get(&id)
            .is_some_and(|w| w.phase == Phase::Ready);
        if current != Some(id)
            || !ready
            || !self.running
            || self.rolling.replaces(slot)
            || self.recycling.iter().any(|r| r.slot == slot)
            || self.recycling.len() >= self.config.restart_parallelism.max(1)
        {
            return;
        }
        self.emit(Event::Recycling {
            id,
            reason: why.to_string(),
        });
        let new = self.spawn_in_slot(slot, false, now);
        self.recycling.push(Recycling { slot, new });
    }

    /// Past the hard ceiling (1.5 times the memory limit): killed now, not recycled.
    pub(crate) fn over_ceiling(&mut self, id: WorkerId, now: Instant) {
        self.advance(now);
        self.kill(id, KillReason::MemoryCeiling);
    }

    /// Workers past `max_age` (plus their jitter) are recycled.
    pub(super) fn recycle_old(&mut self, now: Instant) {
        let Some(max_age) = self.config.max_age else {
            return;
        };
        let old: Vec<WorkerId> = self
            .slots
            .iter()
            .filter_map(|s| s.current)
            .filter(|id| {
                self.workers.get(id).is_some_and(|w| {
                    w.phase == Phase::Ready
                        && now.saturating_duration_since(w.started)
                            >= max_age + jitter(*id, self.config.recycle_jitter)
                })
            })
            .collect();
        for id in old {
            self.recycle(id, Recycle::Age, now);
        }
    }

    /// When the next worker reaches its age limit.
    pub(super) fn next_recycle(&self) -> Option<Instant> {
        let max_age = self.config.max_age?;
        self.slots
            .iter()
            .filter_map(|s| s.current)
            .filter_map(|id| {
                let w = self.workers.get(&id)?;
                (w.phase == Phase::Ready)
                    .then(|| w.started + max_age + jitter(id, self.config.recycle_jitter))
            })
            .min()
    }

    /// Whether `id` is a recycling replacement; if it became ready, it takes over.
    pub(super) fn recycled_ready(&mut self, id: WorkerId, now: Instant) -> bool {
        let Some(index) = self.recycling.iter().position(|r| r.new == id) else {
            return false;
        };
        let recycling = self.recycling.remove(index);
        let slot = &mut self.slots[recycling.slot as usize - 1];
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
