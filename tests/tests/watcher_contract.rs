//! The library contract amphp/cluster's users rely on: the message stream ends after a
//! stop, a dropped watcher stops its workers, a worker's `recv` ends at the stop request,
//! messages sent before anyone asked are kept, the status snapshot counts right.
//!
//! One at a time (`support::serial`): several count this process's children, which under
//! plain `cargo test` would include the workers of the tests beside them.

mod support;

use std::time::{Duration, Instant};

use cluster_watcher::{ClusterWatcher, Event, ExitKind, WorkerPhase};
use support::{captured_logs, children_of, log_text, next_event, process_exists, test_worker};

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_stream_ends_after_stop_and_a_new_start_opens_another() {
    let _serial = support::serial_async().await;
    let watcher = ClusterWatcher::new(test_worker(&["chat", "3"]));
    let mut messages = watcher.messages().expect("the stream");
    watcher.start(2).await.unwrap();
    watcher.stop().await;
    let drained = tokio::time::timeout(LIMIT, async {
        let mut count = 0;
        while messages.recv().await.is_some() {
            count += 1;
        }
        count
    })
    .await
    .expect("the stream ends after stop");
    // A hello and three last messages from each worker.
    assert_eq!(drained, 8);
    assert!(watcher.messages().is_none(), "taken once per start");
    watcher.start(1).await.unwrap();
    let mut again = watcher.messages().expect("a new stream for the new start");
    let first = tokio::time::timeout(LIMIT, again.recv()).await.unwrap();
    assert_eq!(first.unwrap().decode::<String>().unwrap(), "hello from 1");
    watcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_before_anyone_asked_are_kept() {
    let _serial = support::serial_async().await;
    let watcher = ClusterWatcher::new(test_worker(&["chat", "0"]));
    watcher.start(3).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut messages = watcher.messages().unwrap();
    let mut hellos = Vec::new();
    for _ in 0..3 {
        let message = tokio::time::timeout(LIMIT, messages.recv()).await.unwrap();
        hellos.push(message.unwrap().decode::<String>().unwrap());
    }
    hellos.sort();
    assert_eq!(hellos, ["hello from 1", "hello from 2", "hello from 3"]);
    assert_eq!(watcher.dropped_messages(), 0);
    watcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_running_watcher_stops_its_workers_and_respawns_none() {
    let _serial = support::serial_async().await;
    let me = std::process::id();
    let watcher = ClusterWatcher::new(test_worker(&["serve", "127.0.0.1:0"]));
    watcher.start(2).await.unwrap();
    let pids: Vec<u32> = watcher.workers().iter().map(|w| w.pid).collect();
    assert_eq!(children_of(me).len(), 2);
    drop(watcher);
    let deadline = Instant::now() + LIMIT;
    while pids.iter().any(|p| process_exists(*p)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(pids.iter().all(|p| !process_exists(*p)), "workers stopped");
    // Nothing is respawned afterwards.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(children_of(me).is_empty(), "{:?}", children_of(me));
}

#[test]
fn a_runtime_shut_down_under_a_running_watcher_kills_its_workers() {
    let _serial = support::serial();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (watcher, pids) = runtime.block_on(async {
        let watcher = ClusterWatcher::new(test_worker(&["serve", "127.0.0.1:0"]));
        watcher.start(2).await.unwrap();
        let pids: Vec<u32> = watcher.workers().iter().map(|w| w.pid).collect();
        (watcher, pids)
    });
    // No graceful stop is possible without a runtime: the driver kills what it owns.
    drop(runtime);
    // Killed, and zombies now: nobody is left to reap them but this process's exit.
    let running = support::process_running;
    let deadline = Instant::now() + LIMIT;
    while pids.iter().any(|p| running(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(pids.iter().all(|p| !running(*p)), "workers killed");
    drop(watcher);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_looping_on_recv_stops_at_once() {
    let _serial = support::serial_async().await;
    let mut config = test_worker(&["recv-loop"]);
    config.shutdown_timeout = Duration::from_secs(8);
    let watcher = ClusterWatcher::new(config);
    watcher.start(1).await.unwrap();
    let started = Instant::now();
    let exits = watcher.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stopped in {:?}, not at the shutdown timeout",
        started.elapsed()
    );
    assert_eq!(exits.len(), 1);
    assert_eq!(exits[0].status, ExitKind::Code(0));
    assert_eq!(exits[0].killed, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarding_layer_can_be_made_more_than_once() {
    let _serial = support::serial_async().await;
    let logs = captured_logs();
    let watcher = ClusterWatcher::new(test_worker(&["two-layers"]));
    watcher.start(1).await.unwrap();
    let deadline = Instant::now() + LIMIT;
    while !log_text(&logs).contains("logged through the second layer") {
        assert!(Instant::now() < deadline, "{}", log_text(&logs));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    watcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_crashes_and_rolling_restarts_per_slot() {
    let _serial = support::serial_async().await;
    let mut config = test_worker(&["serve", "127.0.0.1:0"]);
    config.min_uptime = Duration::from_millis(100);
    let watcher = ClusterWatcher::new(config);
    let mut events = watcher.events();
    watcher.start(3).await.unwrap();
    let victim = watcher.workers()[1];
    tokio::time::sleep(Duration::from_millis(200)).await;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(victim.pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    next_event(&mut events, LIMIT, |e| match e {
        Event::Ready { id, .. } if id.slot == 2 && id.generation == 2 => Some(()),
        _ => None,
    })
    .await;
    let status = watcher.status().await;
    let slot = &status.slots[1];
    assert_eq!((slot.slot, slot.generation), (2, 2));
    assert_eq!(slot.restarts.crashed, 1);
    assert_eq!(slot.last_exit.map(|e| e.status), Some(ExitKind::Signal(9)));
    assert_eq!(status.ready_workers(), 3);
    watcher.restart().await.unwrap();
    let status = watcher.status().await;
    assert_eq!(status.rolling_restarts_completed, 1);
    for slot in &status.slots {
        assert_eq!(slot.restarts.rolling, 1, "{slot:?}");
        let current = slot.workers.iter().find(|w| w.current).unwrap();
        assert_eq!(current.phase, WorkerPhase::Ready);
    }
    assert_eq!(status.slots[1].generation, 3);
    watcher.stop().await;
    assert!(!watcher.status().await.running);
}

/// Two watchers in one process (an embedder's, or these tests under plain `cargo test`):
/// stopping one, and a worker of it exiting, leaves the other's workers alone. Both named
/// their workers' cgroups and marks by the process id, slot and generation, so the first
/// watcher's cleanup killed the second's worker of the same slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_watchers_in_one_process_never_end_each_others_workers() {
    let _serial = support::serial_async().await;
    let first = ClusterWatcher::new(test_worker(&["serve", "127.0.0.1:0"]));
    let second = ClusterWatcher::new(test_worker(&["serve", "127.0.0.1:0"]));
    first.start(2).await.unwrap();
    second.start(2).await.unwrap();
    let theirs: Vec<u32> = second.workers().iter().map(|w| w.pid).collect();
    // Each worker's mark and cgroup are its watcher's own.
    let of = |watcher: &ClusterWatcher, what: &str| -> Vec<String> {
        watcher
            .workers()
            .iter()
            .map(|w| {
                let path = format!("/proc/{}/{what}", w.pid);
                let text = std::fs::read(&path).unwrap_or_default();
                let text = String::from_utf8_lossy(&text).into_owned();
                match what {
                    "environ" => text
                        .split('\0')
                        .find(|v| v.starts_with("CLUSTER_WORKER_MARK="))
                        .unwrap_or_default()
                        .to_owned(),
                    _ => text,
                }
            })
            .collect()
    };
    for what in ["environ", "cgroup"] {
        let (mine, theirs) = (of(&first, what), of(&second, what));
        assert!(
            mine.iter().all(|m| !theirs.contains(m)),
            "{what}: {mine:?} and {theirs:?}"
        );
    }
    first.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        theirs.iter().all(|p| process_exists(*p)),
        "the second watcher's workers were killed"
    );
    let now: Vec<u32> = second.workers().iter().map(|w| w.pid).collect();
    assert_eq!(now, theirs, "the second watcher's workers were replaced");
    second.stop().await;
}
