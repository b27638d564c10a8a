//! Reloads: applied slot by slot, kept after `min_uptime`, rolled back when they fail.

use super::*;

impl Harness {
    /// Asks for a reload to `config` with `workers` workers; its ticket.
    fn reload(&mut self, config: WatcherConfig, workers: usize) -> Ticket {
        let t = self.ticket();
        let changed = vec!["args".to_owned()];
        self.core
            .reload(t, Arc::new(config), workers, changed, self.now);
        self.drain();
        t
    }

    /// The configurations the driver was told to spawn with, in order, by first argument.
    fn configured(&self) -> Vec<String> {
        self.log
            .iter()
            .filter_map(|a| match a {
                Action::Configure(c) => Some(
                    c.args
                        .first()
                        .map_or("", |a| a.to_str().unwrap_or(""))
                        .to_owned(),
                ),
                _ => None,
            })
            .collect()
    }

    /// Which configuration generation `id` was started with.
    fn generation_of(&self, id: WorkerId) -> u64 {
        self.core.workers[&id].config
    }
}

fn new_config() -> WatcherConfig {
    config().arg("new")
}

#[test]
fn a_reload_replaces_every_slot_with_the_new_configuration_and_is_kept_after_min_uptime() {
    let mut h = Harness::running(2);
    let t = h.reload(new_config(), 2);
    // The driver learns the new configuration before the first replacement is spawned.
    assert!(matches!(h.log[1], Action::Configure(_)), "{:?}", h.log);
    assert_eq!(h.spawns(), vec![id(1, 2)]);
    assert_eq!(h.generation_of(id(1, 2)), 2);
    h.ready(id(1, 2));
    h.ready(id(2, 2));
    assert_eq!(h.stops(), vec![id(1, 1), id(2, 1)]);
    // Not kept yet: the new workers have not proven themselves.
    assert_eq!(h.outcome(t), None);
    assert_eq!(h.core.status(h.now).configuration.reloading, Some(2));
    h.serve_for(Duration::from_millis(900));
    assert_eq!(h.outcome(t), None);
    h.serve_for(Duration::from_millis(200));
    assert_eq!(h.outcome(t), Some(Outcome::Reloaded(Ok(()))));
    let status = h.core.status(h.now).configuration;
    assert_eq!((status.generation, status.reloading), (2, None));
    assert_eq!(status.changed, ["args"]);
}

#[test]
fn a_worker_that_crashes_soon_after_ready_brings_the_old_configuration_back() {
    let mut h = Harness::running(2);
    let t = h.reload(new_config(), 2);
    h.ready(id(1, 2));
    // Slot 2's replacement is starting when slot 1's new worker crashes.
    h.run_for(Duration::from_millis(500));
    let pid = h.pid(id(1, 2));
    h.exit(id(1, 2), ExitKind::Code(1));
    assert_eq!(h.configured(), ["new", ""]);
    // The replacement running the failed configuration goes; slot 2's old worker stays.
    assert!(h.stops().contains(&id(2, 2)));
    assert_eq!(h.current(2), Some(id(2, 1)));
    // Slot 1 comes back with the old configuration.
    assert_eq!(h.current(1), Some(id(1, 3)));
    assert_eq!(h.generation_of(id(1, 3)), 1);
    assert_eq!(
        h.outcome(t),
        None,
        "answered once the old configuration serves"
    );
    h.ready(id(1, 3));
    let Some(Outcome::Reloaded(Err(Failure::EndedAfterReady {
        id: failed,
        pid: failed_pid,
        status,
        after,
    }))) = h.outcome(t)
    else {
        panic!("{:?}", h.outcome(t));
    };
    assert_eq!(
        (failed, failed_pid, status),
        (id(1, 2), pid, ExitKind::Code(1))
    );
    assert_eq!(after, Duration::from_millis(500));
    let status = h.core.status(h.now).configuration;
    assert_eq!(status.generation, 1);
    assert_eq!(status.failed.map(|f| f.generation), Some(2));
}

#[test]
fn a_crash_after_the_round_but_within_min_uptime_still_rolls_back() {
    let mut h = Harness::running(2);
    let t = h.reload(new_config(), 2);
    h.ready(id(1, 2));
    h.ready(id(2, 2));
    h.exit(id(1, 1), ExitKind::Code(0));
    h.exit(id(2, 1), ExitKind::Code(0));
    h.run_for(Duration::from_millis(600));
    h.exit(id(2, 2), ExitKind::Signal(11));
    // Slot 1 runs the failed configuration too: it is replaced, readiness first.
    assert_eq!(h.spawns().iter().filter(|i| i.slot == 1).count(), 2);
    let back = h.current(2).expect("slot 2 respawned");
    assert_eq!(h.generation_of(back), 1);
    h.ready(back);
    h.ready(id(1, 3));
    assert!(h.stops().contains(&id(1, 2)));
    assert!(matches!(
        h.outcome(t),
        Some(Outcome::Reloaded(Err(Failure::EndedAfterReady { .. })))
    ));
}

#[test]
fn a_replacement_that_never_starts_rolls_back_without_touching_the_old_workers() {
    let mut h = Harness::running(3);
    let t = h.reload(new_config(), 3);
    h.exit(id(1, 2), ExitKind::Code(127));
    h.drain();
    // Nothing ran the new configuration: nothing to replace back.
    assert!(h.stops().is_empty());
    assert_eq!(h.spawns(), vec![id(1, 2)]);
    assert!(matches!(
        h.outcome(t),
        Some(Outcome::Reloaded(Err(Failure::ExitedBeforeReady { .. })))
    ));
    // A later reload may run.
    let again = h.reload(new_config(), 3);
    assert_eq!(h.spawns().len(), 2);
    assert_eq!(h.outcome(again), None);
}

#[test]
fn a_reload_scales_and_a_rollback_scales_back() {
    let mut h = Harness::running(2);
    let t = h.reload(new_config(), 3);
    // Slot 3 starts with the new configuration beside slot 1's replacement.
    assert_eq!(h.spawns(), vec![id(3, 1), id(1, 2)]);
    assert_eq!(h.generation_of(id(3, 1)), 2);
    h.exit(id(3, 1), ExitKind::Code(1));
    assert_eq!(h.core.slots.wanted(), 2);
    assert!(h.stops().contains(&id(1, 2)));
    assert!(matches!(
        h.outcome(t),
        Some(Outcome::Reloaded(Err(Failure::ExitedBeforeReady { .. })))
    ));
}

#[test]
fn a_second_reload_is_refused_while_one_is_on_probation_and_a_stop_ends_it() {
    let mut h = Harness::running(1);
    let first = h.reload(new_config(), 1);
    let second = h.reload(new_config(), 1);
    assert_eq!(
        h.outcome(second),
        Some(Outcome::Reloaded(Err(Failure::ReloadUnderWay)))
    );
    h.core.stop(None, h.now);
    h.drain();
    assert_eq!(
        h.outcome(first),
        Some(Outcome::Reloaded(Err(Failure::NotRunning)))
    );
}

#[test]
fn workers_the_watcher_replaced_are_not_held_against_the_reload() {
    let mut h = Harness::running(1);
    let t = h.reload(new_config(), 1);
    h.ready(id(1, 2));
    // The old worker drains and exits: it was stopped, and it ran the old configuration.
    h.exit(id(1, 1), ExitKind::Code(0));
    h.serve_for(Duration::from_millis(1100));
    assert_eq!(h.outcome(t), Some(Outcome::Reloaded(Ok(()))));
}

#[test]
fn a_memory_limit_a_reload_sets_is_watched_and_one_it_removes_is_not() {
    let samples = |h: &Harness| {
        h.log
            .iter()
            .filter(|a| matches!(a, Action::SampleMemory(_)))
            .count()
    };
    let mut h = Harness::running(1);
    h.run_for(Duration::from_secs(3));
    assert_eq!(samples(&h), 0, "no limit, no sampling");
    let mut limited = new_config();
    limited.max_memory = Some(512 << 20);
    let t = h.reload(limited, 1);
    h.ready(id(1, 2));
    h.exit(id(1, 1), ExitKind::Code(0));
    h.serve_for(Duration::from_millis(2100));
    assert_eq!(h.outcome(t), Some(Outcome::Reloaded(Ok(()))));
    let sampled = samples(&h);
    assert!(sampled >= 1, "the new limit is sampled");
    let again = h.reload(new_config(), 1);
    h.ready(id(1, 3));
    h.exit(id(1, 2), ExitKind::Code(0));
    h.serve_for(Duration::from_millis(1100));
    assert_eq!(h.outcome(again), Some(Outcome::Reloaded(Ok(()))));
    let after = samples(&h);
    h.serve_for(Duration::from_secs(3));
    assert_eq!(samples(&h), after, "no sampling once the limit is gone");
}
