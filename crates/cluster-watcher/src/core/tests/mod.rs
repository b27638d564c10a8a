//! The policy with a fake clock: no process, no socket, no sleep.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::Balance;

mod observe;
mod rebalance;
mod recycle;
mod reload;
mod restart;
mod reuseport;
mod slowstart;

/// Plays the driver: answers `Spawn` with a pid at once and records everything else.
pub(super) struct Harness {
    core: Supervisor,
    now: Instant,
    next_pid: u32,
    next_ticket: Ticket,
    log: Vec<Action>,
}

fn config() -> WatcherConfig {
    WatcherConfig::new("test")
}

impl Harness {
    fn new(config: WatcherConfig) -> Self {
        Self {
            core: Supervisor::new(Arc::new(config)),
            now: Instant::now(),
            next_pid: 100,
            next_ticket: 1,
            log: Vec::new(),
        }
    }

    /// Starts `n` workers, makes them all ready, and returns their ids.
    fn running(n: usize) -> Self {
        Self::with(config(), n)
    }

    /// Starts `n` workers with `config` and makes them all ready; the log starts empty.
    fn with(config: WatcherConfig, n: usize) -> Self {
        let mut h = Self::new(config);
        let t = h.ticket();
        h.core.start(t, n, h.now);
        h.drain();
        for id in h.live() {
            h.core.ready(id, h.now);
        }
        h.drain();
        assert_eq!(h.outcome(t), Some(Outcome::Started(Ok(()))));
        h.log.clear();
        h
    }

    fn ticket(&mut self) -> Ticket {
        self.next_ticket += 1;
        self.next_ticket
    }

    fn drain(&mut self) {
        while let Some(action) = self.core.poll_action() {
            if let Action::Spawn(id) = action {
                self.next_pid += 1;
                self.core.spawned(id, self.next_pid, self.now);
            }
            self.log.push(action);
        }
    }

    /// Lets `duration` pass as the driver would: waking at each timer the core asks for.
    fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        while self.now < end {
            let wake = self.core.poll_timeout().unwrap_or(self.now + TICK);
            self.now = wake.clamp(self.now, end);
            self.core.handle_timeout(self.now);
            self.drain();
        }
    }

    fn outcome(&self, ticket: Ticket) -> Option<Outcome> {
        self.log.iter().find_map(|a| match a {
            Action::Complete(t, outcome) if *t == ticket => Some(outcome.clone()),
            _ => None,
        })
    }

    fn live(&self) -> Vec<WorkerId> {
        self.core.workers.keys().copied().collect()
    }

    fn current(&self, slot: u32) -> Option<WorkerId> {
        self.core.slots[slot].current
    }

    fn pid(&self, id: WorkerId) -> u32 {
        self.core.workers[&id].pid
    }

    fn spawns(&self) -> Vec<WorkerId> {
        self.log
            .iter()
            .filter_map(|a| match a {
                Action::Spawn(id) => Some(*id),
                _ => None,
            })
            .collect()
    }

    fn kills(&self) -> Vec<(WorkerId, KillReason)> {
        self.log
            .iter()
            .filter_map(|a| match a {
                Action::Emit(Event::Killed { id, reason, .. }) => Some((*id, *reason)),
                _ => None,
            })
            .collect()
    }

    fn stops(&self) -> Vec<WorkerId> {
        self.log
            .iter()
            .filter_map(|a| match a {
                Action::Stop { id, .. } => Some(*id),
                _ => None,
            })
            .collect()
    }

    fn respawn_delays(&self) -> Vec<Duration> {
        self.log
            .iter()
            .filter_map(|a| match a {
                Action::Emit(Event::Respawning { delay, .. }) => Some(*delay),
                _ => None,
            })
            .collect()
    }

    fn exit(&mut self, id: WorkerId, status: ExitKind) {
        self.core.exited(id, status, self.now);
        self.drain();
    }

    fn ready(&mut self, id: WorkerId) {
        self.core.ready(id, self.now);
        self.drain();
    }

    fn heartbeat_all(&mut self) {
        for id in self.live() {
            self.core.heartbeat(id, self.now);
        }
        self.drain();
    }

    /// Heartbeats every second for `duration`.
    fn serve_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        while self.now < end {
            self.heartbeat_all();
            self.run_for(Duration::from_secs(1).min(end - self.now));
        }
    }
}

fn id(slot: u32, generation: u32) -> WorkerId {
    WorkerId { slot, generation }
}

#[test]
fn start_completes_once_every_worker_is_ready() {
    let mut h = Harness::new(config());
    let t = h.ticket();
    h.core.start(t, 3, h.now);
    h.drain();
    assert_eq!(h.spawns(), vec![id(1, 1), id(2, 1), id(3, 1)]);
    h.ready(id(1, 1));
    h.ready(id(3, 1));
    assert_eq!(h.outcome(t), None);
    h.ready(id(2, 1));
    assert_eq!(h.outcome(t), Some(Outcome::Started(Ok(()))));
}

#[test]
fn start_fails_when_a_worker_exits_before_ready() {
    let mut h = Harness::new(config());
    let t = h.ticket();
    h.core.start(t, 2, h.now);
    h.drain();
    let pid = h.pid(id(2, 1));
    h.exit(id(2, 1), ExitKind::Code(3));
    assert_eq!(
        h.outcome(t),
        Some(Outcome::Started(Err(Failure::ExitedBeforeReady {
            id: id(2, 1),
            pid,
            status: ExitKind::Code(3)
        })))
    );
}

#[test]
fn zero_workers_and_double_start_are_refused() {
    let mut h = Harness::running(1);
    let (a, b) = (h.ticket(), h.ticket());
    h.core.start(a, 0, h.now);
    h.core.start(b, 2, h.now);
    h.drain();
    assert_eq!(
        h.outcome(a),
        Some(Outcome::Started(Err(Failure::ZeroWorkers)))
    );
    assert_eq!(
        h.outcome(b),
        Some(Outcome::Started(Err(Failure::AlreadyStarted)))
    );
}

#[test]
fn a_worker_not_ready_in_time_is_killed_for_it() {
    let mut h = Harness::new(config().ready_timeout(Duration::from_secs(5)));
    let t = h.ticket();
    h.core.start(t, 1, h.now);
    h.drain();
    h.run_for(Duration::from_millis(4900));
    assert!(h.kills().is_empty());
    h.run_for(Duration::from_millis(200));
    assert_eq!(h.kills(), vec![(id(1, 1), KillReason::ReadyTimeout)]);
    let pid = h.pid(id(1, 1));
    h.exit(id(1, 1), ExitKind::Signal(9));
    assert_eq!(
        h.outcome(t),
        Some(Outcome::Started(Err(Failure::NotReady {
            id: id(1, 1),
            pid,
            timeout: Duration::from_secs(5)
        })))
    );
}

#[test]
fn a_silent_worker_is_killed_at_the_heartbeat_timeout() {
    let mut h = Harness::running(2);
    // Slot 1 keeps sending heartbeats, slot 2 falls silent.
    for _ in 0..12 {
        h.core.heartbeat(id(1, 1), h.now);
        h.run_for(Duration::from_secs(1));
    }
    assert_eq!(h.kills(), vec![(id(2, 1), KillReason::HeartbeatTimeout)]);
    assert!(h.log.contains(&Action::Kill {
        id: id(2, 1),
        pid: 102
    }));
}

#[test]
fn heartbeats_keep_workers_alive() {
    let mut h = Harness::running(3);
    h.serve_for(Duration::from_secs(60));
    assert!(h.kills().is_empty());
}

#[test]
fn a_stalled_watcher_blames_no_worker() {
    let mut h = Harness::running(4);
    h.serve_for(Duration::from_secs(3));
    // The watcher is SIGSTOPped for 12 s: nothing is read, no timer runs.
    h.now += Duration::from_secs(12);
    // On resume the timer may fire before the queued heartbeats are read.
    h.core.handle_timeout(h.now);
    h.drain();
    h.heartbeat_all();
    h.serve_for(Duration::from_secs(20));
    assert!(h.kills().is_empty(), "{:?}", h.kills());
    assert!(
        h.log
            .iter()
            .any(|a| matches!(a, Action::Emit(Event::WatcherStalled { .. })))
    );
}

#[test]
fn a_hung_worker_is_still_caught_after_a_stall() {
    let mut h = Harness::running(1);
    h.now += Duration::from_secs(12);
    h.core.handle_timeout(h.now);
    h.drain();
    assert!(h.kills().is_empty());
    h.run_for(Duration::from_secs(11));
    assert_eq!(h.kills(), vec![(id(1, 1), KillReason::HeartbeatTimeout)]);
}

#[test]
fn early_ends_back_off_doubling_up_to_the_ceiling() {
    let mut h = Harness::new(
        config()
            .backoff(Duration::from_millis(100), Duration::from_millis(700))
            .min_uptime(Duration::from_secs(1)),
    );
    let t = h.ticket();
    h.core.start(t, 1, h.now);
    h.drain();
    h.ready(id(1, 1));
    for _ in 0..6 {
        let current = h.current(1).expect("a worker");
        h.exit(current, ExitKind::Code(1));
        // Let the respawn happen, then end the next one early too.
        h.run_for(Duration::from_millis(800));
        let next = h.current(1).expect("respawned");
        h.ready(next);
    }
    let ms = |n| Duration::from_millis(n);
    assert_eq!(
        h.respawn_delays(),
        vec![ms(0), ms(100), ms(200), ms(400), ms(700), ms(700)]
    );
}

#[test]
fn backoff_starts_over_after_min_uptime() {
    let mut h = Harness::new(config().backoff(Duration::from_millis(100), Duration::from_secs(10)));
    let t = h.ticket();
    h.core.start(t, 1, h.now);
    h.drain();
    for _ in 0..3 {
        let current = h.current(1).unwrap();
        h.exit(current, ExitKind::Code(1));
        h.run_for(Duration::from_millis(500));
    }
    // This one runs longer than min_uptime (1 s).
    h.ready(h.current(1).unwrap());
    h.serve_for(Duration::from_secs(2));
    h.exit(h.current(1).unwrap(), ExitKind::Code(1));
    let delays = h.respawn_delays();
    assert_eq!(delays.len(), 4);
    assert_eq!(delays[3], Duration::ZERO);
}

#[test]
fn a_sigkill_at_start_up_backs_off_like_any_crash() {
    let mut h = Harness::new(config());
    let t = h.ticket();
    h.core.start(t, 1, h.now);
    h.drain();
    for _ in 0..5 {
        h.run_for(Duration::from_millis(10));
        let current = h.current(1).unwrap();
        // The OOM killer, say: SIGKILL right after start, not asked for by the watcher.
        h.exit(current, ExitKind::Signal(9));
        while h.current(1).is_none() {
            h.run_for(Duration::from_millis(10));
        }
    }
    let delays = h.respawn_delays();
    assert_eq!(delays[0], Duration::ZERO);
    assert!(delays[1..].iter().all(|d| !d.is_zero()), "{delays:?}");
}

#[test]
fn a_worker_killed_for_bad_traffic_backs_off() {
    let mut h = Harness::running(1);
    for _ in 0..4 {
        let current = h.current(1).unwrap();
        h.ready(current);
        h.core.bad_traffic(current, h.now);
        h.drain();
        h.exit(current, ExitKind::Signal(9));
        h.run_for(Duration::from_millis(500));
    }
    assert!(
        h.kills()
            .iter()
            .all(|(_, reason)| *reason == KillReason::BadTraffic)
    );
    let delays = h.respawn_delays();
    assert!(delays[1..].iter().all(|d| !d.is_zero()), "{delays:?}");
    assert_eq!(h.core.slots[1].restarts.crashed, 4);
}

#[test]
fn a_worker_that_ran_a_while_is_replaced_at_once() {
    let mut h = Harness::running(2);
    h.serve_for(Duration::from_secs(5));
    h.exit(id(2, 1), ExitKind::Signal(9));
    assert_eq!(h.respawn_delays(), vec![Duration::ZERO]);
    assert_eq!(h.current(2), Some(id(2, 2)));
    assert_eq!(h.core.slots[2].restarts.crashed, 1);
}

fn program_mode() -> WatcherConfig {
    config().listen("http", "127.0.0.1:0".parse().unwrap())
}

#[test]
fn a_program_alive_for_ready_after_counts_as_ready() {
    let mut h = Harness::new(program_mode());
    let t = h.ticket();
    h.core.start(t, 2, h.now);
    h.drain();
    h.run_for(Duration::from_millis(900));
    assert_eq!(h.outcome(t), None);
    h.run_for(Duration::from_millis(200));
    assert_eq!(h.outcome(t), Some(Outcome::Started(Ok(()))));
}

#[test]
fn a_program_that_exits_before_ready_after_is_a_failed_start() {
    let mut h = Harness::new(program_mode());
    let t = h.ticket();
    h.core.start(t, 1, h.now);
    h.drain();
    h.run_for(Duration::from_millis(300));
    h.exit(id(1, 1), ExitKind::Code(1));
    assert!(matches!(
        h.outcome(t),
        Some(Outcome::Started(Err(Failure::ExitedBeforeReady { .. })))
    ));
}

#[test]
fn a_program_is_held_to_heartbeats_only_once_it_sends_one() {
    let mut h = Harness::new(program_mode());
    let t = h.ticket();
    h.core.start(t, 1, h.now);
    h.drain();
    h.ready(id(1, 1));
    // No WATCHDOG=1: silent for a minute, still fine.
    h.run_for(Duration::from_secs(60));
    assert!(h.kills().is_empty());
    h.core.heartbeat(id(1, 1), h.now);
    h.run_for(Duration::from_secs(11));
    assert_eq!(h.kills(), vec![(id(1, 1), KillReason::HeartbeatTimeout)]);
}

#[test]
fn shared_sockets_are_checked_every_two_seconds_but_not_when_the_watcher_accepts() {
    let count = |h: &Harness| {
        h.log
            .iter()
            .filter(|a| matches!(a, Action::CheckListeners { .. }))
            .count()
    };
    let mut h = Harness::running(2);
    h.serve_for(Duration::from_millis(6100));
    assert_eq!(count(&h), 3);
    let mut h = Harness::with(config().balance(Balance::RoundRobin), 2);
    h.serve_for(Duration::from_secs(6));
    assert_eq!(count(&h), 0);
}

#[test]
fn a_rebound_listener_restarts_every_worker() {
    let mut h = Harness::running(2);
    h.core.listener_rebound(h.now);
    h.drain();
    assert_eq!(h.spawns(), vec![id(1, 2)]);
    h.ready(id(1, 2));
    h.ready(id(2, 2));
    assert_eq!(h.stops(), vec![id(1, 1), id(2, 1)]);
    // A finished restart closes the sockets no current worker asked for.
    assert!(
        h.log
            .contains(&Action::ReleaseUnusedListeners(vec![id(1, 2), id(2, 2)]))
    );
}

#[test]
fn the_driver_is_woken_at_least_every_tick() {
    let mut h = Harness::running(1);
    for _ in 0..20 {
        let next = h.core.poll_timeout().expect("a timer is always armed");
        assert!(next <= h.now + TICK);
        h.now = next;
        h.core.handle_timeout(h.now);
        h.drain();
    }
}

#[test]
fn a_killed_worker_that_never_ends_lets_the_stop_return_after_the_grace() {
    let mut h = Harness::running(1);
    h.core.bad_traffic(id(1, 1), h.now);
    let t = h.ticket();
    h.core.stop(Some(t), h.now);
    h.drain();
    h.run_for(KILL_GRACE - Duration::from_millis(300));
    assert_eq!(h.outcome(t), None);
    h.run_for(Duration::from_millis(600));
    assert_eq!(h.outcome(t), Some(Outcome::Stopped(Vec::new())));
    assert!(
        h.log
            .iter()
            .any(|a| matches!(a, Action::Emit(Event::Abandoned { .. })))
    );
}

#[test]
fn a_worker_that_never_became_ready_is_killed_a_second_after_its_stop() {
    let mut h = Harness::new(config().shutdown_timeout(Duration::from_secs(10)));
    let t = h.ticket();
    h.core.start(t, 1, h.now);
    h.drain();
    let stop = h.ticket();
    h.core.stop(Some(stop), h.now);
    h.drain();
    h.run_for(Duration::from_millis(900));
    assert!(h.kills().is_empty());
    h.run_for(Duration::from_millis(200));
    assert_eq!(h.kills(), vec![(id(1, 1), KillReason::ShutdownTimeout)]);
    // A ready one gets the whole shutdown timeout.
    let mut h = Harness::running(1);
    h.core.stop(None, h.now);
    h.drain();
    h.run_for(Duration::from_secs(9));
    assert!(h.kills().is_empty());
}

#[test]
fn a_worker_killed_from_outside_after_it_served_is_replaced_at_once_every_time() {
    let mut h = Harness::running(2);
    for _ in 0..6 {
        let current = h.current(1).unwrap();
        h.core.accepted(current, 3, h.now);
        h.run_for(Duration::from_millis(100));
        // SIGKILL from outside (a chaos test, an operator), young but after serving.
        h.exit(current, ExitKind::Signal(9));
        let next = h.current(1).expect("respawned at once");
        h.ready(next);
    }
    assert!(
        h.respawn_delays().iter().all(Duration::is_zero),
        "{:?}",
        h.respawn_delays()
    );
}

#[test]
fn the_backoff_never_leaves_the_cluster_with_nothing_ready_while_a_slot_can_serve() {
    let mut h = Harness::new(
        config()
            .backoff(Duration::from_secs(1), Duration::from_secs(10))
            .min_uptime(Duration::from_secs(5)),
    );
    let t = h.ticket();
    h.core.start(t, 2, h.now);
    h.drain();
    // Slot 2 crash-loops at start-up: it backs off.
    h.ready(id(1, 1));
    h.exit(id(2, 1), ExitKind::Code(1));
    h.run_for(Duration::from_millis(10));
    h.exit(id(2, 2), ExitKind::Code(1));
    assert!(h.core.timers.get(Timer::Respawn(2)).is_some());
    // Slot 1, ready, is killed from outside before it served, twice in a row: it backs off
    // too, unless nothing else is ready.
    h.run_for(Duration::from_millis(10));
    h.exit(id(1, 1), ExitKind::Signal(9));
    assert!(h.current(1).is_some(), "the first end is replaced at once");
    h.ready(h.current(1).unwrap());
    h.run_for(Duration::from_millis(10));
    let again = h.current(1).unwrap();
    h.exit(again, ExitKind::Signal(9));
    assert!(
        h.current(1).is_some(),
        "nothing else is ready: slot 1 starts at once"
    );
    // Slot 2, which never served, still waits.
    assert!(h.core.timers.get(Timer::Respawn(2)).is_some());
}

#[test]
fn a_main_process_that_exits_serves_no_more_and_its_uptime_ends_then() {
    let mut h = Harness::new(program_mode().min_uptime(Duration::from_secs(1)));
    let t = h.ticket();
    h.core.start(t, 1, h.now);
    h.drain();
    // It daemonizes: the main process exits at 200 ms, the daemon holds its output open.
    h.run_for(Duration::from_millis(200));
    h.core.main_exited(id(1, 1), h.now);
    h.drain();
    h.run_for(Duration::from_secs(2));
    assert_eq!(h.outcome(t), None, "not ready after ready_after: it exited");
    h.exit(id(1, 1), ExitKind::Code(0));
    h.run_for(Duration::from_millis(100));
    h.core.main_exited(id(1, 2), h.now);
    h.drain();
    h.run_for(Duration::from_secs(2));
    h.exit(id(1, 2), ExitKind::Code(0));
    // The second end at 100 ms of uptime backs off (not the 2 s its output took to close).
    let delays = h.respawn_delays();
    assert!(!delays[1].is_zero(), "{delays:?}");
}
