//! Self-healing: killed, crashing, hanging and panicking workers are replaced without a hot
//! loop, while the other workers keep serving.

mod support;

use std::time::{Duration, Instant};

use cluster_watcher::{
    Balance, ClusterWatcher, Event, ExitKind, KillReason, StopCause, WorkerInfo,
};
use support::{http_get_async, next_event, test_worker, watcher_port};

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_worker_is_replaced_and_the_port_keeps_answering() {
    let watcher = ClusterWatcher::new(test_worker(&["serve", "127.0.0.1:0"]));
    watcher.start(2).await.unwrap();
    let port = watcher_port(&watcher);
    let mut events = watcher.events();
    let victim = watcher.workers()[0];
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(victim.pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let exit = next_event(&mut events, LIMIT, |e| match e {
        Event::Exited(exit) if exit.pid == victim.pid => Some(*exit),
        _ => None,
    })
    .await;
    assert_eq!(exit.status, ExitKind::Signal(9));
    assert_eq!(exit.stopped, None, "an unexpected exit is a crash");
    let replacement = next_event(&mut events, LIMIT, |e| match e {
        Event::Ready { id, pid } if id.slot == victim.id.slot => Some((*id, *pid)),
        _ => None,
    })
    .await;
    assert_eq!(replacement.0.generation, 2);
    assert_ne!(replacement.1, victim.pid);
    for _ in 0..20 {
        http_get_async(port).await.unwrap();
    }
    watcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_slot_backs_off_while_the_other_keeps_serving() {
    // Slot 1 serves; the crash-looping program runs in a second watcher's only slot.
    let mut config = test_worker(&["crash-after", "20", "3"]);
    config.backoff_initial = Duration::from_millis(100);
    config.backoff_max = Duration::from_secs(2);
    let crashing = ClusterWatcher::new(config);
    let mut events = crashing.events();
    crashing.start(1).await.unwrap();
    let healthy = ClusterWatcher::new(test_worker(&["serve", "127.0.0.1:0"]));
    healthy.start(1).await.unwrap();
    let port = watcher_port(&healthy);

    let window = Instant::now();
    let mut starts = 1;
    let mut delays = Vec::new();
    while window.elapsed() < Duration::from_secs(3) {
        match tokio::time::timeout(Duration::from_millis(100), events.recv()).await {
            Ok(Ok(Event::Started { .. })) => starts += 1,
            Ok(Ok(Event::Respawning { delay, .. })) => delays.push(delay),
            _ => {}
        }
        http_get_async(port)
            .await
            .expect("the healthy cluster serves");
    }
    // 100 + 200 + 400 + 800 + 1600 ms of backoff (plus start-up) fit about 5 restarts in 3 s;
    // a hot loop would have made hundreds.
    assert!(
        (3..=8).contains(&starts),
        "{starts} starts in 3 s; delays {delays:?}"
    );
    assert!(
        delays.windows(2).all(|w| w[1] >= w[0]),
        "delays grow: {delays:?}"
    );
    crashing.stop().await;
    healthy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_blocks_its_runtime_is_killed_and_replaced() {
    let watcher = ClusterWatcher::new(test_worker(&["block-after", "200"]));
    let mut events = watcher.events();
    watcher.start(1).await.unwrap();
    let killed = next_event(&mut events, LIMIT, |e| match e {
        Event::Killed { id, reason, .. } => Some((*id, *reason)),
        _ => None,
    })
    .await;
    assert_eq!(killed.1, KillReason::HeartbeatTimeout);
    let exit = next_event(&mut events, LIMIT, |e| match e {
        Event::Exited(exit) => Some(*exit),
        _ => None,
    })
    .await;
    assert_eq!(exit.killed, Some(KillReason::HeartbeatTimeout));
    next_event(&mut events, LIMIT, |e| match e {
        Event::Ready { id, .. } if id.generation == 2 => Some(()),
        _ => None,
    })
    .await;
    watcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_asking_to_stop_is_stopped_gracefully_not_counted_as_a_crash() {
    let watcher = ClusterWatcher::new(test_worker(&["request-shutdown"]));
    let mut events = watcher.events();
    watcher.start(1).await.unwrap();
    let exit = next_event(&mut events, LIMIT, |e| match e {
        Event::Exited(exit) => Some(*exit),
        _ => None,
    })
    .await;
    assert_eq!(exit.stopped, Some(StopCause::Requested));
    assert_eq!(exit.status, ExitKind::Code(0));
    watcher.stop().await;
}

/// Two round-robin workers, the first SIGSTOPped well inside a 30 s heartbeat timeout: the
/// watcher, the port and the stopped worker.
async fn round_robin_pair_with_one_stopped() -> (ClusterWatcher, u16, WorkerInfo) {
    let mut config = test_worker(&["serve", "127.0.0.1:0"]);
    config.balance = Balance::RoundRobin;
    config.heartbeat_timeout = Duration::from_secs(30);
    let watcher = ClusterWatcher::new(config);
    watcher.start(2).await.unwrap();
    let port = watcher_port(&watcher);
    let stopped = watcher.workers()[0];
    signal(&stopped, rustix::process::Signal::STOP);
    (watcher, port, stopped)
}

fn signal(worker: &WorkerInfo, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(worker.pid as i32).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
}

/// `n` clients at once, each making one request on a new connection and waiting at most
/// `limit` for the answer.
fn start_clients(port: u16, n: usize, limit: Duration) -> Vec<std::thread::JoinHandle<bool>> {
    (0..n)
        .map(|_| std::thread::spawn(move || get_within(port, limit)))
        .collect()
}

/// How many of the clients were answered.
async fn answered(clients: Vec<std::thread::JoinHandle<bool>>) -> usize {
    tokio::task::spawn_blocking(move || {
        clients
            .into_iter()
            .map(|client| client.join().unwrap())
            .filter(|ok| *ok)
            .count()
    })
    .await
    .unwrap()
}

/// One request on a new connection; whether it was answered within `limit`.
fn get_within(port: u16, limit: Duration) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(limit));
    if stream
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    stream.read_to_string(&mut response).is_ok() && response.starts_with("HTTP/1.1 200")
}

/// In round-robin mode a worker that stops reading (here SIGSTOPped) fills its hand-off
/// queue, which the watcher bounds at about 20 connections; every further connection must go
/// to the workers that still read, not wait behind the stuck one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_passes_over_a_worker_that_stopped_reading() {
    let (watcher, port, stopped) = round_robin_pair_with_one_stopped().await;
    const CLIENTS: usize = 120;
    let answered = answered(start_clients(port, CLIENTS, Duration::from_secs(3))).await;
    signal(&stopped, rustix::process::Signal::CONT);
    watcher.stop().await;
    // At most the stuck worker's queue goes unanswered. With the kernel's default buffer it
    // would hold about 280, so half the clients (every other one) would time out; waiting
    // behind it, so would every client after its queue filled.
    assert!(
        answered >= CLIENTS - 30,
        "{answered} of {CLIENTS} clients answered while one worker was stopped"
    );
}

/// Connections the watcher had queued for a round-robin worker that is then killed are not
/// lost with it: the watcher reads them back and passes them to the other workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_passes_a_killed_workers_queued_connections_to_the_others() {
    let (watcher, port, victim) = round_robin_pair_with_one_stopped().await;
    let mut events = watcher.events();
    const CLIENTS: usize = 10; // about half are queued for the stopped worker
    let clients = start_clients(port, CLIENTS, Duration::from_secs(8));
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&victim, rustix::process::Signal::KILL);
    next_event(&mut events, LIMIT, |e| match e {
        Event::Exited(exit) if exit.pid == victim.pid => Some(()),
        _ => None,
    })
    .await;
    let answered = answered(clients).await;
    watcher.stop().await;
    assert_eq!(
        answered, CLIENTS,
        "connections queued for the killed worker were lost"
    );
}
