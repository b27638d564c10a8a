//! `cluster --watch`: the development loop (issue 18). Each test works in a directory of its
//! own under the system's temporary directory and signals only the cluster it started.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use support::{ClusterProcess, Load, workspace_bin};

const LIMIT: Duration = Duration::from_secs(20);

/// A fresh project directory with `src/lib.rs`.
fn project(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cluster-watch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("src/lib.rs"), "// v1\n").unwrap();
    dir
}

fn save(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn stop(mut cluster: ClusterProcess, dir: &Path) {
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success(), "{}", cluster.output());
    let _ = std::fs::remove_dir_all(dir);
}

/// `cluster -w WORKERS --watch SRC [--build BUILD] PROGRAM…`, started and ready.
fn watching(src: &Path, workers: &str, build: Option<&str>, program: &[&str]) -> ClusterProcess {
    let mut args = vec!["-w", workers, "--watch", src.to_str().unwrap()];
    if let Some(build) = build {
        args.extend(["--build", build]);
    }
    args.extend_from_slice(program);
    let cluster = ClusterProcess::start(&args);
    cluster.wait_for("all workers ready", LIMIT);
    // Said once the paths are watched, just after the workers are ready: a save before it
    // would go unseen.
    cluster.wait_for("watching for changes", LIMIT);
    cluster
}

/// Waits until no pid of `old` is a worker any more.
fn wait_replaced(cluster: &ClusterProcess, old: &[u32]) -> Vec<u32> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let now = cluster.worker_pids();
        if now.len() == old.len() && now.iter().all(|p| !old.contains(p)) {
            return now;
        }
        assert!(Instant::now() < deadline, "{}", cluster.output());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Saves a watched file under load; every worker must be replaced and at most `may_fail`
/// requests fail. `program` is the cluster's arguments after `--watch SRC`.
fn save_under_load(name: &str, program: &[&str], may_fail: usize) {
    let dir = project(name);
    let src = dir.join("src");
    let cluster = watching(&src, "2", None, program);
    let port = cluster.port();
    let before = cluster.worker_pids();
    let load = Load::start(port, 2);
    std::thread::sleep(Duration::from_millis(300));
    let saved = Instant::now();
    save(&src.join("lib.rs"), "// v2\n");
    cluster.wait_for("every worker runs the new code", LIMIT);
    wait_replaced(&cluster, &before);
    let took = saved.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failed, _) = load.finish();
    eprintln!(
        "figure: --watch {name}: save to all-new workers in {took:?}; {ok} requests, {} failed",
        failed.len()
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(ok > 100, "{ok}");
    assert!(
        failed.len() <= may_fail,
        "{:?}",
        &failed[..failed.len().min(5)]
    );
    stop(cluster, &dir);
}

fn hello(balance: &str) -> Vec<String> {
    let hello = workspace_bin("hello-http");
    vec![
        "--balance".into(),
        balance.into(),
        hello.to_str().unwrap().into(),
        "127.0.0.1:0".into(),
    ]
}

#[test]
fn a_saved_file_replaces_every_worker_under_load_without_a_failed_request() {
    for balance in ["shared", "round-robin", "reuseport", "least-conn"] {
        let args = hello(balance);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        save_under_load(balance, &args, 0);
    }
}

/// An unmodified program (axum through `listenfd`), in `reuseport` mode: its slot is drained
/// before it gets SIGTERM. (In `shared` mode a connection it accepted in the instant before
/// the signal can be closed unanswered, by the program itself: seen once in a full run.)
/// Even drained, one request in 9,615 was reset once (CI of session 7, a full run): axum's
/// graceful shutdown closes a connection it accepted but had not read yet, as uvicorn does,
/// and one such connection can still be on its side at the signal. At most one, then; the
/// cluster-worker programs above lose none.
#[test]
fn a_listen_program_is_replaced_on_save_without_a_failed_request() {
    let server = workspace_bin("listenfd-axum");
    save_under_load(
        "listen",
        &[
            "--balance",
            "reuseport",
            "--listen",
            "127.0.0.1:0",
            "--ready-after",
            "200ms",
            server.to_str().unwrap(),
        ],
        1,
    );
}

#[test]
fn a_failed_build_keeps_the_old_workers_and_a_fixed_one_restarts() {
    let dir = project("build");
    let hello = workspace_bin("hello-http");
    let src = dir.join("src");
    // The "build" fails while src/lib.rs says "broken", and counts its runs.
    let build = format!(
        "echo run >> {runs} && ! grep -q broken {src}/lib.rs",
        runs = dir.join("runs").display(),
        src = src.display()
    );
    let cluster = watching(
        &src,
        "2",
        Some(&build),
        &[hello.to_str().unwrap(), "127.0.0.1:0"],
    );
    let before = cluster.worker_pids();
    save(&src.join("lib.rs"), "// broken\n");
    cluster.wait_for("build failed", LIMIT);
    assert_eq!(
        cluster.worker_pids(),
        before,
        "the old workers keep serving"
    );
    assert!(support::http_get(cluster.port()).is_ok());
    save(&src.join("lib.rs"), "// fixed\n");
    cluster.wait_for("rolling restart complete", LIMIT);
    wait_replaced(&cluster, &before);
    // The first build at start, the failed one, the fixed one.
    let runs = std::fs::read_to_string(dir.join("runs")).unwrap();
    assert_eq!(runs.lines().count(), 3, "{runs}");
    stop(cluster, &dir);
}

#[test]
fn a_program_that_no_longer_starts_leaves_the_old_workers_serving() {
    let dir = project("panic");
    let worker = workspace_bin("test-worker");
    let src = dir.join("src");
    // Generation 2 and later exit at once: the change broke the program.
    let cluster = ClusterProcess::start(&[
        "-w",
        "2",
        "--watch",
        src.to_str().unwrap(),
        "--ready-timeout",
        "5s",
        worker.to_str().unwrap(),
        "serve-until-gen",
        "127.0.0.1:0",
        "2",
    ]);
    cluster.wait_for("all workers ready", LIMIT);
    let before = cluster.worker_pids();
    save(&src.join("lib.rs"), "// v2\n");
    cluster.wait_for(
        "the new workers did not start; the old ones keep serving",
        LIMIT,
    );
    assert_eq!(cluster.worker_pids(), before);
    let body = support::http_get(cluster.port()).unwrap();
    assert!(body.contains("gen 1"), "{body}");
    stop(cluster, &dir);
}

#[test]
fn fifty_saves_in_a_second_make_one_build_and_one_restart() {
    let dir = project("burst");
    let hello = workspace_bin("hello-http");
    let src = dir.join("src");
    let build = format!("echo run >> {}", dir.join("runs").display());
    let cluster = watching(
        &src,
        "1",
        Some(&build),
        &[hello.to_str().unwrap(), "127.0.0.1:0"],
    );
    for i in 0..50 {
        save(&src.join("lib.rs"), &format!("// save {i}\n"));
        std::thread::sleep(Duration::from_millis(18));
    }
    cluster.wait_for("rolling restart complete", LIMIT);
    // Anything more would have started within the debounce after the last save.
    std::thread::sleep(Duration::from_secs(1));
    let runs = std::fs::read_to_string(dir.join("runs")).unwrap();
    assert_eq!(
        runs.lines().count(),
        2,
        "the first build and one more: {runs}"
    );
    assert_eq!(cluster.count("every worker runs the new code"), 1);
    stop(cluster, &dir);
}

#[test]
fn editor_files_build_output_and_gitignored_files_trigger_nothing() {
    let dir = project("ignored");
    let hello = workspace_bin("hello-http");
    std::fs::create_dir_all(dir.join(".git")).unwrap();
    std::fs::create_dir_all(dir.join("target/debug")).unwrap();
    save(&dir.join(".gitignore"), "*.log\n");
    let cluster = ClusterProcess::start(&[
        "-w",
        "1",
        "--watch",
        dir.to_str().unwrap(),
        hello.to_str().unwrap(),
        "127.0.0.1:0",
    ]);
    cluster.wait_for("watching for changes", LIMIT);
    cluster.wait_for("all workers ready", LIMIT);
    for name in [
        "src/.lib.rs.swp",
        "src/lib.rs~",
        "src/4913",
        "src/.#lib.rs",
        "target/debug/app",
        ".git/index",
        "server.log",
    ] {
        save(&dir.join(name), "x");
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(cluster.count("change detected"), 0, "{}", cluster.output());
    // A real change still counts.
    save(&dir.join("src/lib.rs"), "// v2\n");
    cluster.wait_for("change detected", LIMIT);
    stop(cluster, &dir);
}

#[test]
fn a_missing_watch_path_is_refused_before_anything_starts() {
    let hello = workspace_bin("hello-http");
    let mut cluster = ClusterProcess::start(&[
        "--watch",
        "/nonexistent/cluster-watch",
        hello.to_str().unwrap(),
        "127.0.0.1:0",
    ]);
    let status = cluster.wait(LIMIT);
    assert_eq!(status.code(), Some(1));
    assert!(
        cluster
            .output()
            .contains("--watch /nonexistent/cluster-watch: no such file"),
        "{}",
        cluster.output()
    );
}

#[test]
fn saves_during_a_build_make_one_more_build_after_it() {
    let dir = project("coalesce");
    let hello = workspace_bin("hello-http");
    let src = dir.join("src");
    let build = format!("echo run >> {} && sleep 1", dir.join("runs").display());
    let cluster = watching(
        &src,
        "1",
        Some(&build),
        &[hello.to_str().unwrap(), "127.0.0.1:0"],
    );
    save(&src.join("lib.rs"), "// v2\n");
    // The build started (it takes a second): ten more saves while it runs.
    let deadline = Instant::now() + LIMIT;
    while std::fs::read_to_string(dir.join("runs"))
        .unwrap_or_default()
        .lines()
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "{}", cluster.output());
        std::thread::sleep(Duration::from_millis(10));
    }
    for i in 0..10 {
        save(&src.join("lib.rs"), &format!("// during {i}\n"));
        std::thread::sleep(Duration::from_millis(30));
    }
    let deadline = Instant::now() + LIMIT;
    while cluster.count("every worker runs the new code") < 2 {
        assert!(Instant::now() < deadline, "{}", cluster.output());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let runs = std::fs::read_to_string(dir.join("runs")).unwrap();
    assert_eq!(
        runs.lines().count(),
        3,
        "the first build, the one for the save, one for all the saves during it: {runs}"
    );
    assert_eq!(cluster.count("every worker runs the new code"), 2);
    stop(cluster, &dir);
}

#[test]
fn a_watched_directory_deleted_and_made_again_is_still_watched() {
    let dir = project("recreated");
    let src = dir.join("src");
    let hello = workspace_bin("hello-http");
    let cluster = watching(&src, "1", None, &[hello.to_str().unwrap(), "127.0.0.1:0"]);
    let first = cluster.worker_pids();
    // A checkout that replaces the directory: the old inode is gone, a new one takes its
    // name, and it is watched again (a round runs for what it now holds).
    std::fs::remove_dir_all(&src).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::create_dir(&src).unwrap();
    save(&src.join("lib.rs"), "// v2\n");
    let second = wait_replaced(&cluster, &first);
    // And a save inside the new directory is seen too.
    std::thread::sleep(Duration::from_millis(1500));
    save(&src.join("lib.rs"), "// v3\n");
    wait_replaced(&cluster, &second);
    stop(cluster, &dir);
}
