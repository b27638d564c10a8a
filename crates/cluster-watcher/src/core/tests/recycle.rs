//! Recycling by age, memory and connection count, with a fake clock.

use super::*;
use crate::core::recycle::{Recycle, spread};

const MEMORY: Recycle = Recycle::Memory {
    rss: 100 << 20,
    limit: 64 << 20,
};

#[test]
fn an_old_worker_is_recycled_replacement_first_one_slot_at_a_time() {
    let mut config = config();
    config.max_age = Some(Duration::from_secs(10));
    let mut h = Harness::new(config);
    let t = h.ticket();
    h.core.start(t, 2, h.now);
    h.drain();
    h.ready(id(1, 1));
    h.ready(id(2, 1));
    h.log.clear();
    h.serve_for(Duration::from_secs(11));
    // Both are too old; one replacement at a time (restart_parallelism 1), old kept meanwhile.
    assert_eq!(h.spawns(), vec![id(1, 2)]);
    assert!(h.stops().is_empty());
    h.ready(id(1, 2));
    assert_eq!(h.stops(), vec![id(1, 1)]);
    h.run_for(Duration::from_millis(300));
    assert_eq!(h.spawns(), vec![id(1, 2), id(2, 2)]);
    assert_eq!(h.core.slots[1].restarts.recycled, 1);
    let stopped = h.core.workers[&id(1, 1)].stop;
    assert_eq!(stopped, Some(StopCause::Recycled));
}

#[test]
fn a_failed_recycling_keeps_the_old_worker() {
    let mut h = Harness::running(1);
    h.core.recycle(id(1, 1), MEMORY, h.now);
    h.drain();
    assert_eq!(h.spawns(), vec![id(1, 2)]);
    h.exit(id(1, 2), ExitKind::Code(1));
    assert_eq!(h.current(1), Some(id(1, 1)));
    assert!(h.stops().is_empty());
    // Asked again later, it tries again.
    h.core.recycle(id(1, 1), MEMORY, h.now);
    h.drain();
    assert_eq!(h.spawns(), vec![id(1, 2), id(1, 3)]);
}

#[test]
fn past_the_ceiling_a_worker_is_killed() {
    let mut h = with_memory_limit(64 << 20);
    h.core.memory(id(1, 1), 97 << 20, h.now);
    h.drain();
    assert_eq!(h.kills(), vec![(id(1, 1), KillReason::MemoryCeiling)]);
}

#[test]
fn jitter_spreads_workers_within_its_bound() {
    let shares: std::collections::HashSet<u64> =
        (1..=8).map(|slot| spread(id(slot, 1), 2000)).collect();
    assert!(shares.len() > 4, "{shares:?}");
    assert!(shares.iter().all(|s| *s < 2000));
    assert_eq!(spread(id(3, 1), 0), 0);
}

fn with_memory_limit(limit: u64) -> Harness {
    let mut config = config();
    config.max_memory = Some(limit);
    Harness::with(config, 2)
}

#[test]
fn memory_is_sampled_every_second_for_ready_current_workers_only() {
    let mut h = with_memory_limit(64 << 20);
    h.run_for(Duration::from_millis(2500));
    let samples: Vec<&Vec<(WorkerId, u32)>> = h
        .log
        .iter()
        .filter_map(|a| match a {
            Action::SampleMemory(workers) => Some(workers),
            _ => None,
        })
        .collect();
    assert_eq!(samples.len(), 2, "{samples:?}");
    assert_eq!(samples[0].len(), 2);
    // Without a limit, nothing is ever measured.
    let mut h = Harness::running(2);
    h.serve_for(Duration::from_secs(5));
    assert!(!h.log.iter().any(|a| matches!(a, Action::SampleMemory(_))));
}

#[test]
fn a_worker_over_its_memory_limit_is_recycled_replacement_first() {
    let mut h = with_memory_limit(64 << 20);
    h.core.memory(id(1, 1), 60 << 20, h.now);
    h.drain();
    assert!(h.spawns().is_empty(), "under the limit");
    // Over the limit plus any worker's share of a tenth.
    h.core.memory(id(1, 1), 71 << 20, h.now);
    h.drain();
    assert_eq!(h.spawns(), vec![id(1, 2)]);
    assert!(h.kills().is_empty());
    h.ready(id(1, 2));
    assert_eq!(h.stops(), vec![id(1, 1)]);
    assert_eq!(h.core.slots[1].restarts.recycled, 1);
}

#[test]
fn a_memory_report_for_a_worker_being_replaced_changes_nothing() {
    let mut h = with_memory_limit(64 << 20);
    h.core.memory(id(1, 1), 71 << 20, h.now);
    h.core.memory(id(1, 1), 72 << 20, h.now);
    h.drain();
    assert_eq!(h.spawns(), vec![id(1, 2)], "one replacement, not two");
}

#[test]
fn a_worker_past_its_connection_limit_is_recycled() {
    let mut config = config();
    config.max_requests = Some(1000);
    let mut h = Harness::with(config, 1);
    h.core.accepted(id(1, 1), 999, h.now);
    h.drain();
    assert!(h.spawns().is_empty());
    // At most a tenth more, whichever worker it is.
    h.core.accepted(id(1, 1), 1100, h.now);
    h.drain();
    assert_eq!(h.spawns(), vec![id(1, 2)]);
    let status = h.core.status(h.now);
    assert_eq!(status.slots[0].workers[0].accepted, Some(1100));
}

#[test]
fn an_age_limit_waits_for_a_rolling_restart_then_recycles() {
    let mut config = config();
    config.max_age = Some(Duration::from_secs(10));
    let mut h = Harness::with(config, 1);
    h.serve_for(Duration::from_secs(9));
    let t = h.ticket();
    h.core.restart(t, h.now);
    h.drain();
    assert_eq!(h.spawns(), vec![id(1, 2)]);
    // The age limit passes while the restart's replacement starts: no second replacement.
    h.serve_for(Duration::from_secs(2));
    assert_eq!(h.spawns(), vec![id(1, 2)]);
    h.ready(id(1, 2));
    assert_eq!(h.outcome(t), Some(Outcome::Restarted(Ok(()))));
    h.exit(id(1, 1), ExitKind::Code(0));
    // The new worker's own age counts from its start (at 9 s).
    h.serve_for(Duration::from_secs(7));
    assert_eq!(h.spawns(), vec![id(1, 2)]);
    h.serve_for(Duration::from_secs(2));
    assert_eq!(h.spawns(), vec![id(1, 2), id(1, 3)]);
}

#[test]
fn workers_started_together_reach_their_age_limit_apart() {
    let mut config = config();
    config.max_age = Some(Duration::from_secs(60));
    config.recycle_jitter = Duration::from_secs(6);
    config.restart_parallelism = 8;
    let mut h = Harness::with(config, 8);
    let ages: std::collections::HashSet<Instant> = (1..=8)
        .filter_map(|slot| h.core.timers.get(Timer::MaxAge(id(slot, 1))))
        .collect();
    assert!(ages.len() > 4, "{ages:?}");
    let start = h.now;
    assert!(
        ages.iter()
            .all(|at| *at >= start + Duration::from_secs(60)
                && *at < start + Duration::from_secs(66))
    );
    h.serve_for(Duration::from_secs(67));
    assert_eq!(h.spawns().len(), 8);
}

/// Starts the next worker of slot 1 and makes it ready, as the driver would report it.
fn next_ready(h: &mut Harness) -> WorkerId {
    while h
        .current(1)
        .is_none_or(|id| h.core.phase(id) != Some(Phase::Starting))
    {
        h.run_for(Duration::from_millis(100));
    }
    let id = h.current(1).expect("a worker");
    h.ready(id);
    id
}

#[test]
fn a_program_over_its_limit_at_start_backs_off_and_is_said_unable_to_meet_it() {
    let mut h = with_memory_limit(64 << 20);
    let mut spawned_at = Vec::new();
    for _ in 0..5 {
        // Each new worker is over the limit at its first sample, and is recycled.
        let id = h.current(1).expect("a worker");
        h.core.memory(id, 70 << 20, h.now);
        h.drain();
        let replacement = loop {
            if let Some(new) = h
                .spawns()
                .last()
                .copied()
                .filter(|new| new.slot == 1 && *new != id)
            {
                break new;
            }
            h.run_for(Duration::from_millis(100));
            h.core.memory(id, 70 << 20, h.now);
            h.drain();
        };
        spawned_at.push(h.now);
        h.ready(replacement);
        assert_eq!(h.current(1), Some(replacement));
        h.exit(id, ExitKind::Code(0));
    }
    // Recycled at once, then after 0.1, 0.2, 0.4 … s: not once a second for ever.
    let gaps: Vec<Duration> = spawned_at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps[1] >= Duration::from_millis(100), "{gaps:?}");
    assert!(gaps[3] > gaps[1], "{gaps:?}");
    let unmet = h
        .log
        .iter()
        .filter(|a| matches!(a, Action::Emit(Event::MemoryLimitUnmet { slot: 1, .. })))
        .count();
    assert_eq!(unmet, 1, "said once, at the third strike");
}

#[test]
fn killed_at_the_ceiling_at_start_the_next_worker_waits() {
    let mut h = with_memory_limit(64 << 20);
    for round in 0..4 {
        let id = h.current(1).expect("a worker");
        h.core.memory(id, 200 << 20, h.now);
        h.drain();
        assert!(
            h.kills().contains(&(id, KillReason::MemoryCeiling)),
            "round {round}"
        );
        h.exit(id, ExitKind::Signal(9));
        next_ready(&mut h);
    }
    let delays = h.respawn_delays();
    assert_eq!(delays[0], Duration::ZERO);
    assert!(delays[2..].iter().all(|d| !d.is_zero()), "{delays:?}");
}

#[test]
fn a_worker_that_lived_under_its_limit_clears_the_strikes() {
    let mut h = with_memory_limit(64 << 20);
    h.core.memory(id(1, 1), 70 << 20, h.now);
    h.drain();
    h.ready(id(1, 2));
    h.serve_for(Duration::from_secs(11));
    h.core.memory(id(1, 2), 10 << 20, h.now);
    assert_eq!(h.core.slots[1].memory_strikes, 0);
}
