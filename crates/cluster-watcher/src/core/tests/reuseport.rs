//! Reuseport: steering, drains before stops, stalled slots, released slots.

use std::collections::{BTreeSet, HashMap};

use super::*;

fn reuseport(n: usize) -> Harness {
    Harness::with(config().balance(Balance::Reuseport), n)
}

fn slots(list: &[u32]) -> BTreeSet<u32> {
    list.iter().copied().collect()
}

impl Harness {
    fn steered(&self) -> Vec<BTreeSet<u32>> {
        self.log
            .iter()
            .filter_map(|a| match a {
                Action::Steer(live) => Some(live.clone()),
                _ => None,
            })
            .collect()
    }

    /// Reports these queues (slot, connections waiting) as the driver would.
    fn queues(&mut self, queued: &[(u32, u32)]) {
        let queued: HashMap<u32, u32> = queued.iter().copied().collect();
        self.core.queues(&queued, self.now);
        self.drain();
    }

    /// Reports the same queues every 20 ms for `duration`.
    fn queues_for(&mut self, queued: &[(u32, u32)], duration: Duration) {
        let end = self.now + duration;
        while self.now < end {
            self.now += Duration::from_millis(20);
            self.queues(queued);
        }
    }
}

#[test]
fn new_connections_go_to_the_slots_with_a_ready_worker() {
    let mut h = Harness::new(config().balance(Balance::Reuseport));
    let t = h.ticket();
    h.core.start(t, 3, h.now);
    h.drain();
    h.ready(id(1, 1));
    h.ready(id(3, 1));
    h.exit(id(3, 1), ExitKind::Signal(9));
    assert_eq!(
        h.steered(),
        vec![slots(&[]), slots(&[1]), slots(&[1, 3]), slots(&[1])]
    );
}

#[test]
fn a_worker_is_stopped_once_its_slot_stayed_empty_long_enough() {
    let mut h = reuseport(2);
    let t = h.ticket();
    h.core.scale(t, 1, h.now);
    h.drain();
    // Steered away at once; not told yet.
    assert_eq!(h.steered(), vec![slots(&[1])]);
    assert!(h.stops().is_empty());
    h.queues_for(&[(2, 3)], Duration::from_millis(500));
    assert!(h.stops().is_empty(), "connections still queued");
    h.queues_for(&[(2, 0)], Duration::from_millis(100));
    assert!(h.stops().is_empty(), "not empty for 150 ms yet");
    h.queues_for(&[(2, 0)], Duration::from_millis(100));
    assert_eq!(h.stops(), vec![id(2, 1)]);
}

#[test]
fn a_drain_that_does_not_empty_stops_the_worker_at_its_limit() {
    let mut h = reuseport(2);
    let t = h.ticket();
    h.core.scale(t, 1, h.now);
    h.drain();
    h.queues_for(&[(2, 5)], Duration::from_millis(900));
    assert!(h.stops().is_empty());
    h.run_for(Duration::from_millis(200));
    assert_eq!(h.stops(), vec![id(2, 1)]);
}

#[test]
fn the_last_live_slot_is_stopped_without_a_drain() {
    let mut h = reuseport(1);
    h.core.stop(None, h.now);
    h.drain();
    assert_eq!(h.stops(), vec![id(1, 1)]);
}

#[test]
fn a_rolling_restart_drains_each_old_worker_after_its_successor_is_ready() {
    let mut h = reuseport(2);
    let t = h.ticket();
    h.core.restart(t, h.now);
    h.drain();
    h.ready(id(1, 2));
    assert!(h.stops().is_empty(), "drained first");
    h.queues_for(&[], Duration::from_millis(200));
    assert_eq!(h.stops(), vec![id(1, 1)]);
    // The slot's new worker takes new connections again.
    assert_eq!(h.steered().last(), Some(&slots(&[1, 2])));
}

#[test]
fn when_two_slots_are_replaced_back_to_back_their_old_workers_drain_one_after_the_other() {
    let mut h = reuseport(2);
    let t = h.ticket();
    h.core.restart(t, h.now);
    h.drain();
    h.ready(id(1, 2));
    assert_eq!(h.steered().last(), Some(&slots(&[2])), "slot 1 drains");
    h.ready(id(2, 2));
    assert!(
        h.stops().is_empty(),
        "slot 2's old worker waits: no other slot is live"
    );
    assert_eq!(
        h.steered().last(),
        Some(&slots(&[2])),
        "slot 2 still takes connections"
    );
    h.queues_for(&[], Duration::from_millis(200));
    assert_eq!(h.stops(), vec![id(1, 1)]);
    assert_eq!(h.steered().last(), Some(&slots(&[1])), "then slot 2 drains");
    h.queues_for(&[], Duration::from_millis(200));
    assert_eq!(h.stops(), vec![id(1, 1), id(2, 1)]);
    assert_eq!(h.steered().last(), Some(&slots(&[1, 2])));
}

#[test]
fn a_stop_of_the_cluster_waits_for_no_drain() {
    let mut h = reuseport(3);
    let t = h.ticket();
    h.core.restart(t, h.now);
    h.drain();
    h.ready(id(1, 2));
    h.core.stop(None, h.now);
    h.drain();
    // No slot will be live again: every worker is told at once, none waits its turn.
    let stops = h.stops();
    for worker in [id(1, 2), id(2, 1), id(3, 1)] {
        assert!(stops.contains(&worker), "{worker:?} in {stops:?}");
    }
}

/// A program given listeners, in reuseport mode, restarting: slot 1's old worker stopped.
fn program_restarted() -> Harness {
    let address: cluster_ipc::ListenAddress = "127.0.0.1:8000".parse().unwrap();
    let config = config().balance(Balance::Reuseport).listen("http", address);
    let mut h = Harness::with(config, 2);
    let t = h.ticket();
    h.core.restart(t, h.now);
    h.drain();
    h.ready(id(1, 2));
    h.queues_for(&[], Duration::from_millis(200));
    assert_eq!(h.stops(), vec![id(1, 1)]);
    h
}

fn observed_stopping(h: &Harness) -> bool {
    h.log
        .iter()
        .any(|a| matches!(a, Action::Observe { id: w, .. } if *w == id(1, 1)))
}

#[test]
fn a_stopped_program_keeps_its_slot_from_new_connections_until_it_no_longer_listens() {
    let mut h = program_restarted();
    // Its successor shares the slot's socket, but the old one may still accept on it.
    assert_eq!(h.steered().last(), Some(&slots(&[2])));
    h.run_for(Duration::from_millis(40));
    assert!(observed_stopping(&h), "looked at while it is released");
    h.core.observed(id(1, 1), Observation::Listening, h.now);
    h.run_for(Duration::from_millis(40));
    assert_eq!(h.steered().last(), Some(&slots(&[2])), "still listening");
    h.core.observed(id(1, 1), Observation::EventLoop, h.now);
    h.queues(&[]);
    assert_eq!(h.steered().last(), Some(&slots(&[1, 2])));
}

#[test]
fn a_stopped_program_is_released_by_its_exit_or_at_the_limit() {
    let mut h = program_restarted();
    h.exit(id(1, 1), ExitKind::Code(0));
    h.queues(&[]);
    assert_eq!(h.steered().last(), Some(&slots(&[1, 2])), "gone");

    // (Slot 2's replacement becomes ready meanwhile, by `ready_after`, and its old worker
    // drains in turn: only slot 1 is looked at.)
    let mut h = program_restarted();
    let slot_1_live = |h: &Harness| h.steered().last().is_some_and(|live| live.contains(&1));
    h.run_for(Duration::from_millis(900));
    assert!(!slot_1_live(&h));
    h.run_for(Duration::from_millis(200));
    h.queues(&[]);
    assert!(slot_1_live(&h), "released after 1 s");
}

#[test]
fn a_stalled_slot_gets_no_new_connections_until_its_queue_shrinks() {
    let mut h = reuseport(2);
    h.queues_for(&[(1, 4)], Duration::from_millis(100));
    assert!(h.steered().is_empty(), "not stalled yet");
    h.queues_for(&[(1, 4)], Duration::from_millis(200));
    assert_eq!(h.steered(), vec![slots(&[2])]);
    h.queues(&[(1, 2)]);
    assert_eq!(h.steered(), vec![slots(&[2]), slots(&[1, 2])]);
}

#[test]
fn a_slot_scaled_away_gives_up_its_sockets_once_its_worker_is_gone() {
    let mut h = reuseport(2);
    let t = h.ticket();
    h.core.scale(t, 1, h.now);
    h.drain();
    h.queues_for(&[], Duration::from_millis(200));
    assert!(
        !h.log.contains(&Action::ReleaseSlot(2)),
        "its worker still runs"
    );
    h.exit(id(2, 1), ExitKind::Code(0));
    assert!(h.log.contains(&Action::ReleaseSlot(2)));
    // The group's order changed: steered again although the live slots did not.
    assert_eq!(h.steered().last(), Some(&slots(&[1])));
    assert_eq!(h.steered().len(), 2);
}

#[test]
fn after_a_hand_over_waiting_stops_go_out_and_nothing_is_steered() {
    let mut h = reuseport(2);
    let t = h.ticket();
    h.core.scale(t, 1, h.now);
    h.drain();
    h.log.clear();
    h.core.handed_over(h.now);
    h.drain();
    assert_eq!(h.stops(), vec![id(2, 1)]);
    h.core.stop(None, h.now);
    h.drain();
    assert_eq!(h.stops(), vec![id(2, 1), id(1, 1)]);
    assert!(h.steered().is_empty());
}

#[test]
fn queues_are_read_every_20_ms_in_reuseport_mode_only() {
    let mut h = reuseport(2);
    h.run_for(Duration::from_millis(200));
    let polls = h
        .log
        .iter()
        .filter(|a| matches!(a, Action::PollQueues))
        .count();
    assert!((9..=11).contains(&polls), "{polls}");
    let mut h = Harness::running(2);
    h.run_for(Duration::from_secs(2));
    assert!(!h.log.iter().any(|a| matches!(a, Action::PollQueues)));
}

#[test]
fn in_shared_mode_too_a_slot_scaled_away_gives_up_its_sockets_once_its_worker_is_gone() {
    // Its `udp://` socket, which the kernel would otherwise keep hashing datagrams to.
    let mut h = Harness::with(config(), 2);
    let t = h.ticket();
    h.core.scale(t, 1, h.now);
    h.drain();
    assert!(
        !h.log.contains(&Action::ReleaseSlot(2)),
        "its worker still runs"
    );
    h.exit(id(2, 1), ExitKind::Code(0));
    assert!(h.log.contains(&Action::ReleaseSlot(2)));
    assert!(h.steered().is_empty(), "no reuseport group to steer");
}
