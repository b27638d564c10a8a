//! Which worker gets the next connection: a pure function over the candidates, so the
//! rule is tested without a socket.

use crate::WorkerId;

/// How a mode picks among ready workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rule {
    /// The next ready worker in turn.
    InTurn,
    /// The ready worker with the fewest open connections; between equal counts (not
    /// zero), the one that closed a connection most recently; ties in turn.
    LeastLoaded,
    /// The worker of the slot that owns the connection's key (`hash.rs`); a connection
    /// without a key is taken in turn.
    Rendezvous,
}

/// What the rule compares, lower first: (open connections, time since the worker's last
/// close while any is open).
pub(crate) type Load = (u64, u64);

/// A full share of new connections, in thousandths (a worker out of its slow start).
pub(crate) const FULL: u16 = 1000;

/// The candidate to try next among `n` targets, starting at `start` (the one after the last
/// pick), skipping those in `full`. `target(i)` is target `i`'s id, load and weight (its
/// share in thousandths, [`FULL`] but in its slow start), `None` when it is not ready; the
/// load is only read under [`Rule::LeastLoaded`]. `roll()` is a random number below
/// [`FULL`]: in turn, a target of weight `w` is taken when its turn comes with chance
/// `w / FULL`, else passed over; least-conn counts its connections as `FULL / w` times more.
///
/// Returns the index and whether every ready target was in `full` (then the pick is the
/// next ready one by the same order, to wait on). `None` when no target is ready.
pub(crate) fn pick(
    rule: Rule,
    n: usize,
    start: usize,
    full: &[WorkerId],
    target: impl Fn(usize) -> Option<(WorkerId, Load, u16)>,
    mut roll: impl FnMut() -> u16,
) -> Option<(usize, bool)> {
    let mut best: Option<(usize, Load)> = None;
    let mut fallback: Option<usize> = None;
    let mut passed_over: Option<usize> = None;
    for i in 0..n {
        let index = (start + i) % n;
        let Some((id, load, weight)) = target(index) else {
            continue;
        };
        fallback.get_or_insert(index);
        if full.contains(&id) {
            continue;
        }
        let load = match rule {
            Rule::InTurn | Rule::Rendezvous if weight < FULL && roll() >= weight => {
                passed_over.get_or_insert(index);
                continue;
            }
            Rule::InTurn | Rule::Rendezvous => return Some((index, false)),
            Rule::LeastLoaded => weighted(load, weight),
        };
        if best.is_none_or(|(_, least)| load < least) {
            best = Some((index, load));
            if load.0 == 0 {
                break; // nobody can beat it
            }
        }
    }
    match (best, passed_over, fallback) {
        (Some((index, _)), _, _) | (None, Some(index), _) => Some((index, false)),
        (None, None, Some(index)) => Some((index, true)),
        (None, None, None) => None,
    }
}

/// A load as least-conn weighs it for a worker of `weight`: its open connections (one more,
/// so an idle worker in its slow start is not always first) scaled by `FULL / weight`.
fn weighted(load: Load, weight: u16) -> Load {
    if weight >= FULL {
        return load;
    }
    let scaled = (load.0 + 1) * u64::from(FULL) / u64::from(weight.max(1)) - 1;
    (scaled, load.1)
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

    /// Targets given as (slot, ready, open, quiet).
    fn run(
        rule: Rule,
        targets: &[(u32, bool, u64, u64)],
        start: usize,
        full: &[u32],
    ) -> Option<(u32, bool)> {
        let full: Vec<WorkerId> = full.iter().map(|s| id(*s)).collect();
        let target = |i: usize| {
            let (slot, ready, open, quiet) = targets[i];
            ready.then_some((id(slot), (open, quiet), FULL))
        };
        pick(rule, targets.len(), start, &full, target, || 0)
            .map(|(index, all_full)| (targets[index].0, all_full))
    }

    #[test]
    fn in_turn_takes_the_next_ready_worker() {
        let targets = [(1, true, 0, 0), (2, false, 0, 0), (3, true, 0, 0)];
        assert_eq!(run(Rule::InTurn, &targets, 0, &[]), Some((1, false)));
        assert_eq!(run(Rule::InTurn, &targets, 1, &[]), Some((3, false)));
        assert_eq!(run(Rule::InTurn, &targets, 3, &[]), Some((1, false)));
    }

    #[test]
    fn full_workers_are_passed_over_until_all_are_full() {
        let targets = [(1, true, 0, 0), (2, true, 0, 0)];
        assert_eq!(run(Rule::InTurn, &targets, 0, &[1]), Some((2, false)));
        assert_eq!(run(Rule::InTurn, &targets, 0, &[1, 2]), Some((1, true)));
        assert_eq!(
            run(Rule::LeastLoaded, &targets, 1, &[1, 2]),
            Some((2, true))
        );
    }

    #[test]
    fn nobody_ready_is_no_pick() {
        let targets = [(1, false, 0, 0), (2, false, 0, 0)];
        assert_eq!(run(Rule::InTurn, &targets, 0, &[]), None);
        assert_eq!(run(Rule::LeastLoaded, &[], 0, &[]), None);
    }

    #[test]
    fn least_loaded_takes_the_fewest_open_connections() {
        let targets = [(1, true, 5, 0), (2, true, 2, 0), (3, true, 3, 0)];
        assert_eq!(run(Rule::LeastLoaded, &targets, 0, &[]), Some((2, false)));
        // The idle one wins wherever the turn starts.
        let targets = [(1, true, 1, 9), (2, true, 0, 0), (3, true, 1, 1)];
        assert_eq!(run(Rule::LeastLoaded, &targets, 2, &[]), Some((2, false)));
    }

    #[test]
    fn between_equal_counts_the_worker_that_closed_last_goes_first() {
        // Slot 1 is stuck on a slow request (no close for long); slot 2 closed just now.
        let targets = [(1, true, 1, 5_000_000), (2, true, 1, 100)];
        assert_eq!(run(Rule::LeastLoaded, &targets, 0, &[]), Some((2, false)));
        // Equal in everything: in turn.
        let targets = [(1, true, 1, 7), (2, true, 1, 7)];
        assert_eq!(run(Rule::LeastLoaded, &targets, 1, &[]), Some((2, false)));
    }

    /// Picks 10,000 times from two ready targets, the second of weight `weight`; how many
    /// went to it.
    fn share_of_slow_starter(rule: Rule, weight: u16) -> u32 {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut roll = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            u16::try_from(seed % u64::from(FULL)).unwrap()
        };
        let mut start = 0;
        let mut slow = 0;
        for _ in 0..10_000 {
            let target =
                |i: usize| Some((id(i as u32 + 1), (0, 0), if i == 1 { weight } else { FULL }));
            let (index, _) = pick(rule, 2, start, &[], target, &mut roll).unwrap();
            start = index + 1;
            slow += u32::from(index == 1);
        }
        slow
    }

    #[test]
    fn a_worker_in_its_slow_start_gets_its_weight_s_share() {
        // Weight w against a full worker in turn: w / (1 + w) of the picks.
        let tenth = share_of_slow_starter(Rule::InTurn, 100);
        assert!((700..=1100).contains(&tenth), "{tenth}");
        let half = share_of_slow_starter(Rule::InTurn, 500);
        assert!((3000..=3700).contains(&half), "{half}");
        assert_eq!(share_of_slow_starter(Rule::InTurn, FULL), 5000);
        // Least-conn: an idle starter counts as busier than an idle full worker.
        assert_eq!(share_of_slow_starter(Rule::LeastLoaded, 100), 0);
        assert_eq!(weighted((4, 7), 500), (9, 7));
        assert_eq!(weighted((4, 7), FULL), (4, 7));
    }

    #[test]
    fn least_loaded_skips_the_full_and_the_not_ready() {
        let targets = [(1, true, 0, 0), (2, false, 0, 0), (3, true, 4, 0)];
        assert_eq!(run(Rule::LeastLoaded, &targets, 0, &[1]), Some((3, false)));
    }
}
