//! Readiness of programs given listeners: observed, with `ready_after` as the fallback.

use super::*;

fn program() -> WatcherConfig {
    let address: cluster_ipc::ListenAddress = "127.0.0.1:8000".parse().unwrap();
    config().listen("http", address)
}

fn starting(h: &mut Harness) -> (Ticket, WorkerId) {
    let t = h.ticket();
    h.core.start(t, 1, h.now);
    h.drain();
    (t, id(1, 1))
}

fn observes(h: &Harness) -> usize {
    h.log
        .iter()
        .filter(|a| matches!(a, Action::Observe { .. }))
        .count()
}

#[test]
fn a_program_seen_waiting_on_its_listener_is_ready_before_ready_after() {
    let mut h = Harness::new(program());
    let (t, worker) = starting(&mut h);
    h.run_for(Duration::from_millis(450));
    assert_eq!(observes(&h), 2, "looked at every 200 ms");
    h.core.observed(worker, Observation::Listening, h.now);
    h.drain();
    assert_eq!(h.outcome(t), Some(Outcome::Started(Ok(()))));
    // Looked at no more once ready.
    h.run_for(Duration::from_secs(1));
    assert_eq!(observes(&h), 2);
}

#[test]
fn an_event_loop_not_listening_yet_is_waited_for_past_ready_after() {
    let mut h = Harness::new(program());
    let (t, worker) = starting(&mut h);
    h.run_for(Duration::from_millis(250));
    h.core.observed(worker, Observation::EventLoop, h.now);
    // A slow start-up: ready_after (1 s) passes, it is still starting.
    h.run_for(Duration::from_secs(4));
    assert_eq!(h.outcome(t), None);
    h.core.observed(worker, Observation::Listening, h.now);
    h.drain();
    assert_eq!(h.outcome(t), Some(Outcome::Started(Ok(()))));
    assert!(
        !h.log
            .iter()
            .any(|a| matches!(a, Action::Emit(Event::ReadyByTimer { .. })))
    );
}

#[test]
fn a_program_that_cannot_be_seen_is_ready_by_ready_after_and_says_so() {
    let mut h = Harness::new(program());
    let (t, worker) = starting(&mut h);
    h.run_for(Duration::from_millis(250));
    h.core.observed(worker, Observation::Unknown, h.now);
    h.run_for(Duration::from_millis(900));
    assert_eq!(h.outcome(t), Some(Outcome::Started(Ok(()))));
    assert!(h.log.iter().any(|a| matches!(
        a,
        Action::Emit(Event::ReadyByTimer { id, .. }) if *id == worker
    )));
}

#[test]
fn cluster_worker_programs_are_not_looked_at() {
    let mut h = Harness::new(config());
    starting(&mut h);
    h.run_for(Duration::from_secs(1));
    assert_eq!(observes(&h), 0);
}
