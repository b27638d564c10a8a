//! Live rebalancing: a newcomer after a scale-up gets its share of the keep-alive
//! connections, asked of the busiest workers round by round until level.

use super::*;

type Round = (Vec<(WorkerId, u32)>, Vec<(WorkerId, u32)>);

/// Each round: who wants how many, who is asked for how many.
fn asks(h: &Harness) -> Vec<Round> {
    h.log
        .iter()
        .filter_map(|a| match a {
            Action::Rebalance { wants, asks } => Some((wants.clone(), asks.clone())),
            _ => None,
        })
        .collect()
}

fn report(h: &mut Harness, id: WorkerId, open: u64) {
    h.core.open(id, open, h.now);
    h.drain();
}

/// Two workers holding `first` and `second` connections, then a third added and ready.
fn scaled_up_from(first: u64, second: u64) -> (Harness, WorkerId) {
    let mut h = Harness::running(2);
    report(&mut h, id(1, 1), first);
    report(&mut h, id(2, 1), second);
    let t = h.ticket();
    h.core.add_worker(t, h.now);
    h.drain();
    let newcomer = h.current(3).unwrap();
    h.ready(newcomer);
    (h, newcomer)
}

#[test]
fn a_scale_up_asks_the_busy_workers_for_their_excess_until_level() {
    let (mut h, newcomer) = scaled_up_from(40, 24);
    // 64 over 3: a fair share is 21; slot 1 has 19 too many, slot 2 three.
    assert_eq!(
        asks(&h),
        vec![(vec![(newcomer, 21)], vec![(id(1, 1), 19), (id(2, 1), 3)])]
    );
    // Reports after the round: the newcomer got only half its share; asked again.
    h.run_for(Duration::from_millis(100));
    report(&mut h, id(1, 1), 30);
    report(&mut h, id(2, 1), 24);
    report(&mut h, newcomer, 10);
    h.run_for(Duration::from_millis(900));
    assert_eq!(asks(&h).len(), 2);
    // Level: no more rounds.
    h.run_for(Duration::from_millis(100));
    report(&mut h, id(1, 1), 22);
    report(&mut h, id(2, 1), 21);
    report(&mut h, newcomer, 21);
    h.run_for(Duration::from_secs(5));
    assert_eq!(asks(&h).len(), 2);
}

#[test]
fn a_worker_that_has_not_reported_since_a_round_counts_with_its_move() {
    let (mut h, _) = scaled_up_from(40, 24);
    // Nobody reports: the round's moves stand for the counts, which are level then.
    h.run_for(Duration::from_secs(3));
    assert_eq!(asks(&h).len(), 1, "{:?}", asks(&h));
}

#[test]
fn no_rebalancing_at_the_start_in_a_rolling_restart_or_for_programs() {
    let mut h = Harness::running(2);
    report(&mut h, id(1, 1), 40);
    let t = h.ticket();
    h.core.restart(t, h.now);
    h.drain();
    for _ in 0..4 {
        for id in h.live() {
            h.ready(id);
        }
        h.run_for(Duration::from_millis(200));
    }
    assert!(asks(&h).is_empty());
    let address: cluster_ipc::ListenAddress = "127.0.0.1:8000".parse().unwrap();
    let mut h = Harness::with(config().listen("http", address), 2);
    report(&mut h, id(1, 1), 40);
    h.exit(id(2, 1), ExitKind::Signal(9));
    let replacement = h.current(2).unwrap();
    h.ready(replacement);
    assert!(asks(&h).is_empty());
}

#[test]
fn a_second_newcomer_joins_the_next_round() {
    let mut h = Harness::running(2);
    report(&mut h, id(1, 1), 32);
    report(&mut h, id(2, 1), 32);
    for _ in 0..2 {
        let t = h.ticket();
        h.core.add_worker(t, h.now);
        h.drain();
    }
    let (third, fourth) = (h.current(3).unwrap(), h.current(4).unwrap());
    h.ready(third);
    h.ready(fourth);
    // One round at once, from the counts then; the second newcomer waits for the next.
    assert_eq!(asks(&h).len(), 1);
    h.run_for(Duration::from_millis(100));
    report(&mut h, id(1, 1), 22);
    report(&mut h, id(2, 1), 21);
    report(&mut h, third, 21);
    h.run_for(Duration::from_millis(900));
    assert_eq!(
        asks(&h).last(),
        Some(&(
            vec![(fourth, 16)],
            vec![(id(1, 1), 6), (id(2, 1), 5), (third, 5)]
        ))
    );
}

#[test]
fn the_rounds_end_even_if_the_shares_never_level() {
    let mut h = Harness::running(2);
    report(&mut h, id(1, 1), 100);
    h.exit(id(2, 1), ExitKind::Signal(9));
    let replacement = h.current(2).unwrap();
    h.ready(replacement);
    // Every report says nothing moved.
    for _ in 0..10 {
        h.run_for(Duration::from_millis(100));
        report(&mut h, id(1, 1), 100);
        report(&mut h, replacement, 0);
        h.run_for(Duration::from_millis(900));
    }
    assert_eq!(asks(&h).len(), 4, "{:?}", asks(&h));
}
