//! Every moment the supervisor waits for, in one table (quinn's `TimerTable`): the driver
//! sleeps until [`TimerTable::next`] and nothing else.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::WorkerId;

/// What happens when a timer expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// The worker's phase ran out: not ready in time, silent too long, not stopped in time,
    /// or (killed) not reaped within the grace after `SIGKILL`.
    Phase(WorkerId),
    /// Program mode: alive this long counts as ready (`ready_after`), unless it is seen
    /// starting an event loop.
    ReadyAfter(WorkerId),
    /// Program mode: time to look at a starting worker again.
    Observe(WorkerId),
    /// The worker reached `max_age` (plus its jitter).
    MaxAge(WorkerId),
    /// A slot backing off starts its next worker.
    Respawn(u32),
    /// Reuseport: a draining slot's queue did not empty in time; its worker stops anyway.
    DrainLimit(WorkerId),
    /// A stop gives up waiting for processes that ignore `SIGKILL`.
    GiveUp,
    /// Time to measure the workers' memory (`max_memory`).
    SampleMemory,
    /// Time to look at the shared listening sockets (shared and reuseport modes).
    CheckListeners,
    /// Reuseport: time to read the slots' accept queues.
    PollQueues,
    /// A reload on probation may be kept now; or its rollback is answered, done or not.
    Reload,
    /// Slow start: time to recompute the ramping workers' weights.
    SlowStart,
    /// Live rebalancing: time for its next round.
    Rebalance,
    /// The driver calls in at least this often, so a long gap is seen as a stall.
    Tick,
}

impl Timer {
    /// Whether the timer moves with a stall of the watcher: a deadline that judges a worker
    /// on what it sent (nothing was read meanwhile), or that counts from an event (a
    /// backoff). Periodic looks and age limits do not move.
    fn moves_with_stall(self) -> bool {
        matches!(
            self,
            Self::Phase(_) | Self::Respawn(_) | Self::GiveUp | Self::DrainLimit(_) | Self::Reload
        )
    }
}

/// The armed timers, earliest first.
#[derive(Debug, Default)]
pub(crate) struct TimerTable {
    at: HashMap<Timer, Instant>,
    order: BTreeSet<(Instant, Timer)>,
}

impl TimerTable {
    /// Arms `timer` for `at`, replacing an earlier arming.
    pub(crate) fn set(&mut self, timer: Timer, at: Instant) {
        if let Some(old) = self.at.insert(timer, at) {
            self.order.remove(&(old, timer));
        }
        self.order.insert((at, timer));
    }

    /// Arms `timer` for `at` unless it is armed already.
    pub(crate) fn set_if_unset(&mut self, timer: Timer, at: Instant) {
        if !self.at.contains_key(&timer) {
            self.set(timer, at);
        }
    }

    /// Disarms `timer`.
    pub(crate) fn stop(&mut self, timer: Timer) {
        if let Some(at) = self.at.remove(&timer) {
            self.order.remove(&(at, timer));
        }
    }

    /// When `timer` expires, if armed.
    pub(crate) fn get(&self, timer: Timer) -> Option<Instant> {
        self.at.get(&timer).copied()
    }

    /// The earliest armed moment.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.order.first().map(|(at, _)| *at)
    }

    /// Disarms and returns the earliest timer due at `now`.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<Timer> {
        let &(at, timer) = self.order.first()?;
        if at > now {
            return None;
        }
        self.stop(timer);
        Some(timer)
    }

    /// Moves every timer that judges workers or counts from an event by `gap` (the watcher
    /// did not run meanwhile).
    pub(crate) fn shift(&mut self, gap: Duration) {
        let moved: Vec<(Timer, Instant)> = self
            .at
            .iter()
            .filter(|(timer, _)| timer.moves_with_stall())
            .map(|(timer, at)| (*timer, *at + gap))
            .collect();
        for (timer, at) in moved {
            self.set(timer, at);
        }
    }

    /// Disarms every timer of `id`.
    pub(crate) fn forget_worker(&mut self, id: WorkerId) {
        for timer in [
            Timer::Phase(id),
            Timer::ReadyAfter(id),
            Timer::Observe(id),
            Timer::MaxAge(id),
            Timer::DrainLimit(id),
        ] {
            self.stop(timer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(slot: u32) -> WorkerId {
        WorkerId {
            slot,
            generation: 1,
        }
    }

    #[test]
    fn timers_expire_in_order_and_rearming_replaces() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let mut table = TimerTable::default();
        table.set(Timer::Phase(id(1)), now + ms(30));
        table.set(Timer::Respawn(2), now + ms(10));
        table.set(Timer::Phase(id(1)), now + ms(20));
        table.set_if_unset(Timer::Respawn(2), now + ms(99));
        assert_eq!(table.next(), Some(now + ms(10)));
        assert_eq!(table.pop_expired(now + ms(5)), None);
        assert_eq!(table.pop_expired(now + ms(25)), Some(Timer::Respawn(2)));
        assert_eq!(table.pop_expired(now + ms(25)), Some(Timer::Phase(id(1))));
        assert_eq!(table.pop_expired(now + ms(25)), None);
        assert_eq!(table.next(), None);
    }

    #[test]
    fn a_stall_moves_deadlines_but_not_periodic_looks() {
        let now = Instant::now();
        let mut table = TimerTable::default();
        table.set(Timer::Phase(id(1)), now);
        table.set(Timer::SampleMemory, now);
        table.shift(Duration::from_secs(5));
        assert_eq!(
            table.get(Timer::Phase(id(1))),
            Some(now + Duration::from_secs(5))
        );
        assert_eq!(table.get(Timer::SampleMemory), Some(now));
        table.forget_worker(id(1));
        assert_eq!(table.get(Timer::Phase(id(1))), None);
    }
}
