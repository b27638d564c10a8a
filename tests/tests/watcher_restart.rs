//! Rolling restarts under continuous load: no failed request, every worker replaced; a broken
//! replacement leaves the old worker serving.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use cluster_watcher::{Balance, ClusterWatcher, StartError};
use support::{Load, test_worker, watcher_port};

async fn rolling_restart_under_load(balance: Balance) {
    let watcher = ClusterWatcher::new(test_worker(&["serve", "127.0.0.1:0"]).balance(balance));
    watcher.start(3).await.unwrap();
    let port = watcher_port(&watcher);
    let before: HashSet<u32> = watcher.workers().iter().map(|w| w.pid).collect();
    let load = Load::start(port, 2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    watcher.restart().await.unwrap();
    // Let the old workers drain and the new ones take traffic.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, failed, seen) = tokio::task::spawn_blocking(move || load.finish())
        .await
        .unwrap();
    let after: Vec<_> = watcher.workers();
    assert_eq!(after.len(), 3);
    assert!(
        after
            .iter()
            .all(|w| w.id.generation == 2 && !before.contains(&w.pid)),
        "{after:?}"
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok + failed.len() as u64,
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 50, "only {ok} requests went through");
    assert!(
        seen.iter().any(|b| b.ends_with("gen 2")),
        "new workers served"
    );
    watcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_in_shared_mode_fails_no_request() {
    rolling_restart_under_load(Balance::Shared).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_in_round_robin_mode_fails_no_request() {
    rolling_restart_under_load(Balance::RoundRobin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_that_fails_leaves_the_old_worker_serving() {
    let watcher = ClusterWatcher::new(test_worker(&["serve-until-gen", "127.0.0.1:0", "2"]));
    watcher.start(2).await.unwrap();
    let before: Vec<u32> = watcher.workers().iter().map(|w| w.pid).collect();
    let err = watcher.restart().await.unwrap_err();
    assert!(
        matches!(err, StartError::ExitedBeforeReady { .. }),
        "{err:?}"
    );
    let after: Vec<u32> = watcher.workers().iter().map(|w| w.pid).collect();
    assert_eq!(before, after, "the old workers keep serving");
    let port = watcher_port(&watcher);
    tokio::task::spawn_blocking(move || support::http_get(port))
        .await
        .unwrap()
        .unwrap();
    watcher.stop().await;
}
