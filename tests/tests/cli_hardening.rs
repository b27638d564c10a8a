//! Production hardening. `--cpu-affinity`: each slot on its own CPU, across restarts.
//! `--user`: workers as an unprivileged user while the watcher keeps root for binding,
//! checked from inside a worker (its ids, groups and NoNewPrivs; it cannot signal the
//! watcher nor reach its control socket; it reports ready through NOTIFY_SOCKET), and a
//! cluster-worker program serving port 80 as `nobody` through a restart, recycling and an
//! upgrade with no failed request. Skipped (with a line saying so) when not run as root.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cluster_testkit::KeepAliveLoad;
use rustix::process::Signal;
use serde_json::Value;
use support::{ClusterProcess, Load, free_port, http_get, workspace_bin};

const LIMIT: Duration = Duration::from_secs(30);

/// The user the tests drop to.
const NOBODY: u32 = 65534;

fn root() -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        eprintln!("skipped: --user needs the tests to run as root");
    }
    root
}

/// A directory every user may read and search, with copies of `files` (executable), for
/// workers that run as `nobody` (the build directory may not be reachable for them).
fn public_dir(test: &str, files: &[PathBuf]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("cluster-priv-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for file in files {
        let copy = dir.join(file.file_name().unwrap());
        std::fs::copy(file, &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

fn probe_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/privilege_probe.py")
}

#[test]
fn a_worker_run_as_nobody_has_nothing_of_the_watchers_privileges() {
    // The system's interpreter: one under root's home (pyenv) is not for nobody to run.
    let python = Path::new("/usr/bin/python3");
    if !root() || !python.exists() {
        return;
    }
    let dir = public_dir("probe", &[probe_script()]);
    let control = dir.join("control/cluster.sock");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let probe = dir.join("privilege_probe.py");
    let env = format!("PROBE_CONTROL={}", control.display());
    let mut cluster = ClusterProcess::start(&[
        "--user",
        "nobody",
        "-w",
        "2",
        "--listen",
        &listen,
        // Ready only when the worker says so on its NOTIFY_SOCKET.
        "--ready-after",
        "off",
        "--ready-timeout",
        "10s",
        "--control",
        control.to_str().unwrap(),
        "--env",
        &env,
        python.to_str().unwrap(),
        probe.to_str().unwrap(),
    ]);
    cluster.wait_for("all workers ready", LIMIT);
    for _ in 0..4 {
        let body = http_get(port).unwrap();
        let facts: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(facts["uid"], NOBODY, "{facts}");
        assert_eq!(facts["euid"], NOBODY, "{facts}");
        assert_eq!(facts["gid"], NOBODY, "{facts}");
        assert_eq!(facts["groups"], serde_json::json!([]), "{facts}");
        assert_eq!(facts["no_new_privs"], "1", "{facts}");
        assert_eq!(facts["kill_watcher"], "EPERM", "{facts}");
        assert_eq!(facts["control"], "EACCES", "{facts}");
    }
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Port 80 when it is free here, or any port.
fn low_port() -> u16 {
    match std::net::TcpListener::bind(("127.0.0.1", 80)) {
        Ok(_) => 80,
        Err(_) => {
            eprintln!("port 80 is taken here: another port instead");
            free_port()
        }
    }
}

#[test]
fn nobody_serves_a_low_port_through_restart_recycling_and_upgrade_with_no_failed_request() {
    if !root() {
        return;
    }
    let dir = public_dir("serve", &[workspace_bin("hello-http")]);
    let control = dir.join("control/cluster.sock");
    let port = low_port();
    let address = format!("127.0.0.1:{port}");
    let program = dir.join("hello-http");
    let mut cluster = ClusterProcess::start(&[
        "--user",
        "nobody:nogroup",
        "-w",
        "2",
        "--max-requests",
        "500",
        "--control",
        control.to_str().unwrap(),
        program.to_str().unwrap(),
        &address,
    ]);
    cluster.wait_for("all workers ready", LIMIT);
    let keep_alive = KeepAliveLoad::start(port, 4, "/");
    let fresh = Load::start(port, 2);
    let client = |args: &[&str]| {
        let status = Command::new(workspace_bin("cluster"))
            .args(args)
            .arg("--control")
            .arg(&control)
            .output()
            .unwrap();
        assert!(status.status.success(), "{args:?}: {status:?}");
    };
    client(&["upgrade"]);
    client(&["restart"]);
    // New connections keep coming: workers go over --max-requests and are recycled.
    std::thread::sleep(Duration::from_millis(1500));
    let kept = keep_alive.finish();
    let (ok, mut failed, _) = fresh.finish();
    failed.extend(kept.failed);
    eprintln!(
        "--user nobody on port {port}: {} requests, {} failed",
        ok + kept.ok,
        failed.len()
    );
    assert!(failed.is_empty(), "{:?}", &failed[..failed.len().min(5)]);
    assert!(ok > 1000, "too little load to recycle: {ok}");
    // The old watcher handed over; the new one's workers are nobody's too.
    assert!(cluster.wait(LIMIT).success());
    let status = Command::new(workspace_bin("cluster"))
        .args(["status", "--json", "--control"])
        .arg(&control)
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    let recycled: u64 = status["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["restarts"]["recycled"].as_u64().unwrap_or(0))
        .sum();
    let new_watcher = status["pid"].as_u64().unwrap() as u32;
    for slot in status["slots"].as_array().unwrap() {
        for worker in slot["workers"].as_array().unwrap() {
            let pid = worker["pid"].as_u64().unwrap();
            let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            assert!(
                proc_status.contains(&format!("Uid:\t{NOBODY}\t{NOBODY}")),
                "{proc_status}"
            );
        }
    }
    assert!(recycled >= 1, "no worker recycled: {status}");
    support::signal(new_watcher, Signal::TERM);
    let deadline = std::time::Instant::now() + LIMIT;
    while support::process_exists(new_watcher) {
        assert!(
            std::time::Instant::now() < deadline,
            "the new watcher did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn user_without_root_is_a_bad_argument() {
    if !root() {
        return;
    }
    use std::os::unix::process::CommandExt;
    let dir = public_dir("noroot", &[workspace_bin("cluster")]);
    let output = Command::new(dir.join("cluster"))
        .args(["--user", "nobody", "/bin/true"])
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--user needs the watcher to run as root"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Each current worker's `Cpus_allowed_list`, by slot.
fn cpus_by_slot(control: &Path) -> Vec<(u64, String)> {
    let status = Command::new(workspace_bin("cluster"))
        .args(["status", "--json", "--control"])
        .arg(control)
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    let mut cpus = Vec::new();
    for slot in status["slots"].as_array().unwrap() {
        for worker in slot["workers"].as_array().unwrap() {
            if worker["current"] != true {
                continue;
            }
            let pid = worker["pid"].as_u64().unwrap();
            let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let list = text
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap()
                .trim()
                .to_owned();
            cpus.push((slot["slot"].as_u64().unwrap(), list));
        }
    }
    cpus
}

#[test]
fn cpu_affinity_pins_each_slot_to_its_cpu_across_restarts() {
    let allowed = rustix::thread::sched_getaffinity(None).unwrap();
    let mine: Vec<usize> = (0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|cpu| allowed.is_set(*cpu))
        .collect();
    let dir = std::env::temp_dir().join(format!("cluster-affinity-{}", std::process::id()));
    let control = dir.join("cluster.sock");
    let mut cluster = ClusterProcess::start(&[
        "--cpu-affinity",
        "auto",
        "-w",
        "3",
        "--control",
        control.to_str().unwrap(),
        workspace_bin("cli-worker").to_str().unwrap(),
        "serve",
        "127.0.0.1:0",
    ]);
    cluster.wait_for("all workers ready", LIMIT);
    let expected: Vec<(u64, String)> = (1..=3)
        .map(|slot| (slot, mine[(slot as usize - 1) % mine.len()].to_string()))
        .collect();
    assert_eq!(cpus_by_slot(&control), expected);
    let restarted = Command::new(workspace_bin("cluster"))
        .args(["restart", "--control"])
        .arg(&control)
        .status()
        .unwrap();
    assert!(restarted.success());
    assert_eq!(cpus_by_slot(&control), expected);
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--cpu-affinity` in reuseport mode: a connection goes to the worker pinned to the CPU
/// it arrives on (on loopback, the client's CPU), so its packets and its worker share one.
#[test]
fn reuseport_steers_each_connection_to_the_worker_pinned_to_its_cpu() {
    let allowed = rustix::thread::sched_getaffinity(None).unwrap();
    let mine: Vec<usize> = (0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|cpu| allowed.is_set(*cpu))
        .take(2)
        .collect();
    if mine.len() < 2 {
        eprintln!("fewer than two CPUs: nothing to steer between");
        return;
    }
    let dir = std::env::temp_dir().join(format!("cluster-by-cpu-{}", std::process::id()));
    let control = dir.join("cluster.sock");
    let port = free_port();
    let list = format!("{},{}", mine[0], mine[1]);
    let address = format!("127.0.0.1:{port}");
    let mut cluster = ClusterProcess::start(&[
        "--cpu-affinity",
        &list,
        "--balance",
        "reuseport",
        "-w",
        "2",
        "--control",
        control.to_str().unwrap(),
        workspace_bin("hello-http").to_str().unwrap(),
        &address,
    ]);
    cluster.wait_for("all workers ready", LIMIT);
    let slots = cpus_by_slot(&control);
    for &cpu in &mine {
        let served: Vec<String> = std::thread::spawn(move || {
            let mut set = rustix::thread::CpuSet::new();
            set.set(cpu);
            rustix::thread::sched_setaffinity(None, &set).unwrap();
            (0..40)
                .map(|_| {
                    let localhost = std::net::Ipv4Addr::LOCALHOST;
                    let response = cluster_testkit::http_get_from(localhost, port, "/", "")
                        .expect("an answer");
                    cluster_testkit::header_of(&response, "x-cluster-worker")
                        .unwrap_or("?")
                        .to_owned()
                })
                .collect()
        })
        .join()
        .unwrap();
        let slot = slots
            .iter()
            .find(|(_, cpus)| *cpus == cpu.to_string())
            .map(|(slot, _)| *slot)
            .unwrap();
        eprintln!("connections from CPU {cpu}: served by {served:?} (slot {slot} is pinned there)");
        assert!(
            served.iter().all(|worker| worker == &slot.to_string()),
            "from CPU {cpu}, expected slot {slot} only: {served:?}"
        );
    }
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success());
    let _ = std::fs::remove_dir_all(&dir);
}
