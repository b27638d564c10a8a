//! Messages both ways, reply-to-sender, broadcast, forwarded logs with their worker id, and
//! nothing a worker sent before exiting is lost.
//!
//! One at a time (`support::serial`): the log lines are captured process-wide, and under
//! plain `cargo test` another test's watcher would log into this one's capture.
mod support;

use std::collections::HashSet;
use std::time::Duration;

use cluster_watcher::{ClusterWatcher, Event, ExitKind};
use support::{captured_logs, log_text, next_event, test_worker};

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_flow_both_ways_with_replies_to_the_sender_and_broadcast() {
    let _serial = support::serial_async().await;
    let watcher = ClusterWatcher::new(test_worker(&["chat", "0"]));
    let mut messages = watcher.messages().unwrap();
    assert!(watcher.messages().is_none(), "the stream is taken once");
    watcher.start(3).await.unwrap();
    // Each hello is answered to its sender only; each sender must answer its own ping.
    let (mut hellos, mut pongs) = (HashSet::new(), HashSet::new());
    while hellos.len() < 3 || pongs.len() < 3 {
        let message = tokio::time::timeout(LIMIT, messages.recv())
            .await
            .unwrap()
            .unwrap();
        let text: String = message.decode().unwrap();
        let slot = message.id.slot;
        if text == format!("hello from {slot}") {
            message.reply(&format!("ping {slot}")).await.unwrap();
            hellos.insert(slot);
        } else {
            assert_eq!(
                text,
                format!("pong {slot} from {slot}"),
                "a reply went to its sender only"
            );
            pongs.insert(slot);
        }
    }
    watcher.send_to(2, &"ping direct".to_owned()).await.unwrap();
    let direct: String = tokio::time::timeout(LIMIT, messages.recv())
        .await
        .unwrap()
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(direct, "pong direct from 2");
    assert_eq!(watcher.broadcast(&"ping all".to_owned()).await.unwrap(), 3);
    let mut from = HashSet::new();
    for _ in 0..3 {
        let text: String = tokio::time::timeout(LIMIT, messages.recv())
            .await
            .unwrap()
            .unwrap()
            .decode()
            .unwrap();
        from.insert(text);
    }
    assert_eq!(
        from,
        (1..=3).map(|i| format!("pong all from {i}")).collect()
    );
    assert!(matches!(
        watcher.send_to(9, &"x".to_owned()).await,
        Err(cluster_watcher::SendError::NoSuchWorker(9))
    ));
    watcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_and_logs_sent_before_exit_are_never_lost() {
    let _serial = support::serial_async().await;
    let logs = captured_logs();
    let watcher = ClusterWatcher::new(test_worker(&["chat", "200"]));
    let mut messages = watcher.messages().unwrap();
    watcher.start(2).await.unwrap();
    let exits = watcher.stop().await;
    assert!(
        exits.iter().all(|e| e.status == ExitKind::Code(0)),
        "{exits:?}"
    );
    // Every exit was reported only after the worker's messages were read.
    let mut last = [0usize; 3];
    while let Ok(message) = messages.try_recv() {
        let text: String = message.decode().unwrap();
        if text.starts_with("last ") {
            last[message.id.slot as usize] += 1;
        }
    }
    assert_eq!(&last[1..], &[200, 200], "messages sent before exit");
    let text = log_text(&logs);
    for slot in 1..=2 {
        let count = text
            .lines()
            .filter(|l| l.contains("log 199") && l.contains(&format!("worker={slot}")))
            .count();
        assert_eq!(
            count, 1,
            "the last log event of worker {slot}, tagged with its id:\n{text}"
        );
        let all = text
            .lines()
            .filter(|l| l.contains(" log ") && l.contains(&format!("worker={slot}")))
            .count();
        assert_eq!(all, 200, "every log event of worker {slot}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_worker_exits_promptly_and_its_panic_is_logged() {
    let _serial = support::serial_async().await;
    let logs = captured_logs();
    let watcher = ClusterWatcher::new(test_worker(&["panic-after", "100"]));
    let mut events = watcher.events();
    watcher.start(1).await.unwrap();
    let started = std::time::Instant::now();
    let exit = next_event(&mut events, LIMIT, |e| match e {
        Event::Exited(exit) => Some(*exit),
        _ => None,
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "prompt exit, not amphp's 5 s hang"
    );
    assert_eq!(exit.status, ExitKind::Code(101));
    let text = log_text(&logs);
    assert!(
        text.contains("boom from the test worker") && text.contains("worker=1"),
        "{text}"
    );
    assert!(text.contains("exit status 101"), "{text}");
    watcher.stop().await;
}

/// A program embedding the watcher creates it inside its own span; every line the watcher's
/// tasks log (a worker's forwarded logs, its exit) carries that span, wherever `start` is
/// called from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchers_log_lines_carry_the_span_it_was_created_in() {
    let _serial = support::serial_async().await;
    let logs = captured_logs();
    // The capture is the process's: only what is logged from here on is this test's.
    let before = logs.lock().unwrap().len();
    let span = tracing::info_span!("embedder", app = "tagged-watcher");
    let watcher = span.in_scope(|| ClusterWatcher::new(test_worker(&["panic-after", "100"])));
    let mut events = watcher.events();
    watcher.start(1).await.unwrap();
    next_event(&mut events, LIMIT, |e| match e {
        Event::Exited(exit) => Some(*exit),
        _ => None,
    })
    .await;
    watcher.stop().await;
    let text = log_text(&logs).split_off(before);
    // From the caller's task, a forwarded worker log, the supervising task.
    for needle in ["worker started", "panicked at", "exit status 101"] {
        let line = text
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?}:\n{text}"));
        assert!(line.contains("tagged-watcher"), "{line}");
    }
}
