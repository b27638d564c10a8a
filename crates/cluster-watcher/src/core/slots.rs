//! [`SlotTable`]: the cluster's slots, numbered from 1 as everywhere else.

use std::ops::{Index, IndexMut};
use std::time::{Duration, Instant};

use crate::{RestartCounts, WorkerExit, WorkerId};

/// One slot: the place a worker holds, kept across its restarts.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    /// Whether the cluster wants it (false: scaled away, or the cluster stopped).
    pub(crate) wanted: bool,
    /// The latest generation started in it.
    pub(crate) generation: u32,
    /// The worker serving it (or starting to), if any.
    pub(crate) current: Option<WorkerId>,
    /// Delay before the next respawn after an early end (0 for the first).
    pub(crate) backoff: Duration,
    pub(crate) restarts: RestartCounts,
    pub(crate) last_exit: Option<WorkerExit>,
    /// Its last worker had been ready and was killed from outside: it can serve.
    pub(crate) could_serve: bool,
    /// Its workers went over the memory limit young, this many times in a row.
    pub(crate) memory_strikes: u32,
    /// The worker that struck last (each worker strikes once).
    pub(crate) memory_struck: Option<WorkerId>,
    /// Until then, it is not recycled (nor restarted after a kill) for memory again.
    pub(crate) memory_hold: Option<Instant>,
}

/// The slots, indexed by slot number (from 1).
#[derive(Debug, Default)]
pub(crate) struct SlotTable(Vec<Slot>);

impl SlotTable {
    /// How many slots exist (wanted or not).
    pub(crate) fn len(&self) -> u32 {
        self.0.len() as u32
    }

    /// Whether slot `slot` exists.
    pub(crate) fn contains(&self, slot: u32) -> bool {
        (1..=self.len()).contains(&slot)
    }

    /// Every slot with its number.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &Slot)> {
        (1u32..).zip(&self.0)
    }

    /// Every slot with its number, mutably.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (u32, &mut Slot)> {
        (1u32..).zip(&mut self.0)
    }

    /// Slot `slot`, made (wanted) if the table does not reach it yet.
    pub(crate) fn ensure(&mut self, slot: u32) -> &mut Slot {
        while self.len() < slot {
            self.0.push(Slot {
                wanted: true,
                ..Slot::default()
            });
        }
        &mut self[slot]
    }

    /// The lowest slot not wanted (a freed one), or a new one; made wanted, its counters
    /// fresh, its generation kept.
    pub(crate) fn claim(&mut self) -> u32 {
        let slot = match self.0.iter().position(|s| !s.wanted) {
            Some(index) => index as u32 + 1,
            None => {
                self.0.push(Slot::default());
                self.len()
            }
        };
        let generation = self[slot].generation;
        self[slot] = Slot {
            wanted: true,
            generation,
            ..Slot::default()
        };
        slot
    }

    /// How many slots are wanted.
    pub(crate) fn wanted(&self) -> usize {
        self.0.iter().filter(|s| s.wanted).count()
    }

    /// The highest wanted slot.
    pub(crate) fn last_wanted(&self) -> Option<u32> {
        self.0.iter().rposition(|s| s.wanted).map(|i| i as u32 + 1)
    }

    /// Forgets every slot (a fresh start).
    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }
}

impl Index<u32> for SlotTable {
    type Output = Slot;

    fn index(&self, slot: u32) -> &Slot {
        &self.0[slot as usize - 1]
    }
}

impl IndexMut<u32> for SlotTable {
    fn index_mut(&mut self, slot: u32) -> &mut Slot {
        &mut self.0[slot as usize - 1]
    }
}
