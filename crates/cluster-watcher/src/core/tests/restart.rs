//! Rolling restarts, scaling and stopping, with a fake clock.

use super::*;

#[test]
fn rolling_restart_replaces_slots_in_order_one_at_a_time() {
    let mut h = Harness::running(3);
    let t = h.ticket();
    h.core.restart(t, h.now);
    h.drain();
    assert_eq!(h.spawns(), vec![id(1, 2)]);
    h.ready(id(1, 2));
    assert_eq!(h.stops(), vec![id(1, 1)]);
    assert_eq!(h.spawns(), vec![id(1, 2), id(2, 2)]);
    h.ready(id(2, 2));
    h.ready(id(3, 2));
    assert_eq!(h.stops(), vec![id(1, 1), id(2, 1), id(3, 1)]);
    assert_eq!(h.outcome(t), Some(Outcome::Restarted(Ok(()))));
    assert_eq!(h.core.slots[3].restarts.rolling, 1);
}

#[test]
fn rolling_restart_parallelism_replaces_two_at_once() {
    let mut h = Harness::new(config().restart_parallelism(2));
    let t = h.ticket();
    h.core.start(t, 4, h.now);
    h.drain();
    for id in h.live() {
        h.ready(id);
    }
    h.log.clear();
    let t = h.ticket();
    h.core.restart(t, h.now);
    h.drain();
    assert_eq!(h.spawns(), vec![id(1, 2), id(2, 2)]);
    h.ready(id(2, 2));
    assert_eq!(h.spawns(), vec![id(1, 2), id(2, 2), id(3, 2)]);
}

#[test]
fn a_failed_replacement_keeps_the_old_worker() {
    let mut h = Harness::running(2);
    let t = h.ticket();
    h.core.restart(t, h.now);
    h.drain();
    let pid = h.pid(id(1, 2));
    h.exit(id(1, 2), ExitKind::Code(1));
    // Slot 1 keeps its old worker; slot 2 is tried all the same.
    assert_eq!(h.current(1), Some(id(1, 1)));
    assert!(h.stops().is_empty());
    assert_eq!(h.spawns(), vec![id(1, 2), id(2, 2)]);
    h.ready(id(2, 2));
    assert_eq!(
        h.outcome(t),
        Some(Outcome::Restarted(Err(Failure::ExitedBeforeReady {
            id: id(1, 2),
            pid,
            status: ExitKind::Code(1)
        })))
    );
    assert_eq!(h.core.rolling_done, (0, 1));
}

#[test]
fn restart_requests_during_a_restart_coalesce_into_one_more() {
    let mut h = Harness::running(2);
    let first = h.ticket();
    h.core.restart(first, h.now);
    let later: Vec<Ticket> = (0..5).map(|_| h.ticket()).collect();
    for t in &later {
        h.core.restart(*t, h.now);
    }
    h.drain();
    h.ready(id(1, 2));
    h.ready(id(2, 2));
    assert_eq!(h.outcome(first), Some(Outcome::Restarted(Ok(()))));
    assert_eq!(h.outcome(later[0]), None);
    // One more round, not five, once the first generation has drained.
    h.exit(id(1, 1), ExitKind::Code(0));
    h.exit(id(2, 1), ExitKind::Code(0));
    h.ready(id(1, 3));
    h.ready(id(2, 3));
    for t in &later {
        assert_eq!(h.outcome(*t), Some(Outcome::Restarted(Ok(()))));
    }
    assert_eq!(h.spawns().len(), 4);
}

#[test]
fn scaling_up_during_a_restart_starts_new_slots_at_once() {
    let mut h = Harness::running(2);
    let t = h.ticket();
    h.core.restart(t, h.now);
    let s = h.ticket();
    h.core.scale(s, 4, h.now);
    h.drain();
    assert_eq!(h.spawns(), vec![id(1, 2), id(3, 1), id(4, 1)]);
    assert_eq!(h.outcome(s), Some(Outcome::Scaled(Ok(()))));
    h.ready(id(1, 2));
    h.ready(id(2, 2));
    // The new slots started with the new program: the round does not replace them.
    assert_eq!(h.outcome(t), Some(Outcome::Restarted(Ok(()))));
}

#[test]
fn scaling_down_during_a_restart_stops_the_slot_and_its_replacement() {
    let mut h = Harness::running(3);
    let t = h.ticket();
    h.core.restart(t, h.now);
    h.drain();
    h.ready(id(1, 2));
    h.ready(id(2, 2));
    // Slot 3's replacement is starting.
    assert!(h.live().contains(&id(3, 2)));
    let s = h.ticket();
    h.core.scale(s, 2, h.now);
    h.drain();
    let stops = h.stops();
    assert!(
        stops.contains(&id(3, 1)) && stops.contains(&id(3, 2)),
        "{stops:?}"
    );
    assert_eq!(h.outcome(t), Some(Outcome::Restarted(Ok(()))));
}

#[test]
fn remove_worker_never_removes_the_last_one() {
    let mut h = Harness::running(2);
    let t = h.ticket();
    h.core.remove_worker(t, h.now);
    h.drain();
    assert_eq!(h.stops(), vec![id(2, 1)]);
    let pid = h.pid(id(2, 1));
    h.exit(id(2, 1), ExitKind::Code(0));
    match h.outcome(t) {
        Some(Outcome::Removed(Some(exit))) => {
            assert_eq!((exit.pid, exit.stopped), (pid, Some(StopCause::ScaledDown)))
        }
        other => panic!("{other:?}"),
    }
    let t = h.ticket();
    h.core.remove_worker(t, h.now);
    h.drain();
    assert_eq!(h.outcome(t), Some(Outcome::Removed(None)));
    // No respawn for a scaled-down slot.
    assert!(h.spawns().is_empty());
}

#[test]
fn added_workers_reuse_freed_slot_numbers() {
    let mut h = Harness::running(3);
    let s = h.ticket();
    h.core.scale(s, 1, h.now);
    h.drain();
    h.exit(id(2, 1), ExitKind::Code(0));
    h.exit(id(3, 1), ExitKind::Code(0));
    let t = h.ticket();
    h.core.add_worker(t, h.now);
    h.drain();
    assert_eq!(h.spawns(), vec![id(2, 2)]);
    h.ready(id(2, 2));
    assert_eq!(h.outcome(t), Some(Outcome::Added(Ok(id(2, 2)))));
}

#[test]
fn stop_during_a_backoff_wait_starts_nothing() {
    let mut h = Harness::new(config().backoff(Duration::from_secs(5), Duration::from_secs(5)));
    let t = h.ticket();
    h.core.start(t, 1, h.now);
    h.drain();
    h.ready(id(1, 1));
    h.exit(id(1, 1), ExitKind::Code(1));
    h.ready(id(1, 2));
    h.exit(id(1, 2), ExitKind::Code(1));
    assert!(h.core.timers.get(Timer::Respawn(1)).is_some());
    h.log.clear();
    let stop = h.ticket();
    h.core.stop(Some(stop), h.now);
    h.drain();
    assert_eq!(h.outcome(stop), Some(Outcome::Stopped(Vec::new())));
    h.run_for(Duration::from_secs(10));
    assert!(h.spawns().is_empty());
}

#[test]
fn stop_kills_what_outlives_the_shutdown_timeout() {
    let mut h = Harness::new(config().shutdown_timeout(Duration::from_secs(3)));
    let t = h.ticket();
    h.core.start(t, 2, h.now);
    h.drain();
    h.ready(id(1, 1));
    h.ready(id(2, 1));
    let stop = h.ticket();
    h.core.stop(Some(stop), h.now);
    h.drain();
    assert_eq!(h.stops(), vec![id(1, 1), id(2, 1)]);
    h.exit(id(1, 1), ExitKind::Code(0));
    h.run_for(Duration::from_secs(4));
    assert_eq!(h.kills(), vec![(id(2, 1), KillReason::ShutdownTimeout)]);
    h.exit(id(2, 1), ExitKind::Signal(9));
    match h.outcome(stop) {
        Some(Outcome::Stopped(exits)) => {
            assert_eq!(exits.len(), 2);
            assert_eq!(exits[1].killed, Some(KillReason::ShutdownTimeout));
            assert_eq!(exits[0].stopped, Some(StopCause::Stop));
        }
        other => panic!("{other:?}"),
    }
    assert!(h.core.is_idle());
}

#[test]
fn stop_gives_up_on_a_process_that_ignores_sigkill() {
    let mut h = Harness::new(config().shutdown_timeout(Duration::from_secs(1)));
    let t = h.ticket();
    h.core.start(t, 1, h.now);
    h.drain();
    let stop = h.ticket();
    h.core.stop(Some(stop), h.now);
    h.drain();
    h.run_for(Duration::from_secs(1) + KILL_GRACE + Duration::from_secs(1));
    assert_eq!(h.outcome(stop), Some(Outcome::Stopped(Vec::new())));
    assert!(
        h.log
            .iter()
            .any(|a| matches!(a, Action::Emit(Event::Abandoned { .. })))
    );
}

#[test]
fn repeated_stop_requests_from_a_worker_are_one_stop() {
    let mut h = Harness::running(2);
    for _ in 0..10_000 {
        h.core.stop_requested(id(1, 1), h.now);
    }
    h.drain();
    assert_eq!(h.stops(), vec![id(1, 1)]);
    // Its own request is no crash: it is replaced at once when it goes.
    h.serve_for(Duration::from_secs(2));
    h.exit(id(1, 1), ExitKind::Code(0));
    assert_eq!(h.current(1), Some(id(1, 2)));
    assert_eq!(h.core.slots[1].restarts.requested, 1);
}

#[test]
fn an_old_worker_dying_during_its_replacement_is_not_respawned_twice() {
    let mut h = Harness::running(1);
    let t = h.ticket();
    h.core.restart(t, h.now);
    h.drain();
    h.serve_for(Duration::from_secs(2));
    h.exit(id(1, 1), ExitKind::Signal(9));
    assert_eq!(h.spawns(), vec![id(1, 2)], "no extra respawn");
    h.ready(id(1, 2));
    assert_eq!(h.current(1), Some(id(1, 2)));
    assert_eq!(h.outcome(t), Some(Outcome::Restarted(Ok(()))));
}

#[test]
fn a_failed_spawn_is_retried_with_backoff() {
    let mut h = Harness::running(1);
    h.serve_for(Duration::from_secs(2));
    h.exit(id(1, 1), ExitKind::Code(1));
    // Generation 2 cannot be spawned (the binary was deleted, say), nor the next ones.
    for generation in 2..5 {
        h.core
            .spawn_failed(id(1, generation), Some(2), "No such file".into(), h.now);
        h.drain();
        h.run_for(Duration::from_secs(1));
    }
    let delays = h.respawn_delays();
    assert!(delays.len() >= 3);
    assert!(delays[2..].iter().all(|d| !d.is_zero()), "{delays:?}");
}

#[test]
fn status_counts_restarts_by_cause() {
    let mut h = Harness::running(2);
    h.serve_for(Duration::from_secs(2));
    h.exit(id(1, 1), ExitKind::Signal(9));
    h.ready(id(1, 2));
    let t = h.ticket();
    h.core.restart(t, h.now);
    h.drain();
    h.ready(id(1, 3));
    h.ready(id(2, 2));
    let status = h.core.status(h.now);
    assert_eq!(status.slots[0].restarts.crashed, 1);
    assert_eq!(status.slots[0].restarts.rolling, 1);
    assert_eq!(status.slots[0].generation, 3);
    assert_eq!(status.rolling_restarts_completed, 1);
    assert_eq!(status.ready_workers(), 2);
}

#[test]
fn restarts_never_leave_more_than_two_generations_alive() {
    let mut h = Harness::running(1);
    let first = h.ticket();
    h.core.restart(first, h.now);
    h.drain();
    h.ready(id(1, 2));
    // Generation 1 drains (its long-lived connections take their time); a second restart
    // waits for it instead of starting a third generation.
    let second = h.ticket();
    h.core.restart(second, h.now);
    h.drain();
    h.run_for(Duration::from_secs(2));
    assert_eq!(h.spawns(), vec![id(1, 2)]);
    h.exit(id(1, 1), ExitKind::Code(0));
    assert_eq!(h.spawns(), vec![id(1, 2), id(1, 3)]);
    h.ready(id(1, 3));
    assert_eq!(h.outcome(second), Some(Outcome::Restarted(Ok(()))));
}
