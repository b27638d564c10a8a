//! `cluster top`: its JSON lines, and its terminal view driven in a real terminal (tmux):
//! the table, a key that scales, a worker killed while shown, a resize, and `q`.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use serde_json::Value;
use support::{ClusterProcess, workspace_bin};

const LIMIT: Duration = Duration::from_secs(30);

fn start(test: &str) -> (ClusterProcess, PathBuf) {
    let dir = std::env::temp_dir().join(format!("cluster-top-{}-{test}", std::process::id()));
    let control = dir.join("cluster.sock");
    let cluster = ClusterProcess::start(&[
        "-w",
        "2",
        "--name",
        "topped",
        "--control",
        control.to_str().unwrap(),
        workspace_bin("hello-http").to_str().unwrap(),
        "127.0.0.1:0",
    ]);
    cluster.wait_for("control socket ready", LIMIT);
    (cluster, control)
}

#[test]
fn json_lines_give_every_worker_with_its_rates() {
    let (mut cluster, control) = start("json");
    let mut top = Command::new(workspace_bin("cluster"))
        .args(["top", "--json", "--interval", "0.2", "--control"])
        .arg(&control)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(top.stdout.take().unwrap()).lines();
    let _first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let second: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    // Under load, requests a second show (reported with the workers' heartbeats).
    let load = support::Load::start(cluster.port(), 1);
    let serving = lines.take(40).find_map(|line| {
        let frame: Value = serde_json::from_str(&line.unwrap()).unwrap();
        let rates: f64 = frame["rows"]
            .as_array()?
            .iter()
            .filter_map(|row| row["requests_per_second"].as_f64())
            .sum();
        (rates > 0.0).then_some(rates)
    });
    let (ok, _, _) = load.finish();
    let _ = top.kill();
    let _ = top.wait();
    eprintln!("top under load: {serving:?} requests a second ({ok} answered)");
    assert!(
        serving.is_some(),
        "no requests a second shown for {ok} requests"
    );
    assert_eq!(second["name"], "topped");
    assert_eq!(second["ready"], 2);
    let rows = second["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{second}");
    for row in rows {
        assert_eq!(row["state"], "ready");
        // From the second frame on, rates are known.
        assert!(row["cpu_percent"].is_number(), "{row}");
        assert!(row["rss_bytes"].as_u64().unwrap() > 0, "{row}");
    }
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success());
}

/// A tmux server of this test's own.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new(test: &str) -> Option<Self> {
        let found = Command::new("tmux").arg("-V").output().is_ok();
        if !found {
            eprintln!("skipped: no tmux (tests/peers/install.sh installs it)");
            return None;
        }
        Some(Self {
            socket: format!("cluster-top-{}-{test}", std::process::id()),
        })
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }

    /// Waits until the screen shows `needle`.
    fn until(&self, needle: &str) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            let screen = self.screen();
            if screen.contains(needle) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} on screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn alive(&self) -> bool {
        self.run(&["has-session", "-t", "top"]).status.success()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

fn top_command(control: &Path) -> String {
    format!(
        "{} top --interval 0.3 --control {}",
        workspace_bin("cluster").display(),
        control.display()
    )
}

#[test]
fn the_terminal_view_scales_survives_a_kill_and_a_resize_and_quits() {
    let Some(tmux) = Tmux::new("view") else {
        return;
    };
    let (mut cluster, control) = start("view");
    let started = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "120",
        "-y",
        "30",
        &top_command(&control),
    ]);
    assert!(started.status.success(), "{started:?}");
    let screen = tmux.until("2 of 2 workers ready");
    assert!(
        screen.contains("req/s") && screen.contains("conn/s") && screen.contains("last exit"),
        "{screen}"
    );
    // `+` adds a worker, `-` takes one away.
    tmux.run(&["send-keys", "-t", "top", "+"]);
    tmux.until("3 of 3 workers ready");
    tmux.run(&["send-keys", "-t", "top", "-"]);
    tmux.until("2 of 2 workers ready");
    // `r` restarts every worker, one by one.
    let before = cluster.worker_pids();
    tmux.run(&["send-keys", "-t", "top", "r"]);
    let deadline = Instant::now() + LIMIT;
    while cluster.worker_pids().iter().any(|pid| before.contains(pid)) {
        assert!(Instant::now() < deadline, "`r` restarted nothing");
        std::thread::sleep(Duration::from_millis(50));
    }
    tmux.until("2 of 2 workers ready");
    tmux.run(&["send-keys", "-t", "top", "+"]);
    tmux.until("3 of 3 workers ready");
    // A worker killed while shown: the view goes on and shows how it ended.
    let victim = cluster.worker_pids()[0];
    support::signal(victim, Signal::KILL);
    tmux.until("signal 9");
    tmux.until("3 of 3 workers ready");
    // Resized: redrawn at the new size.
    tmux.run(&["resize-window", "-t", "top", "-x", "90", "-y", "16"]);
    let screen = tmux.until("3 of 3 workers ready");
    assert!(screen.lines().all(|l| l.chars().count() <= 90), "{screen}");
    // `q` quits, and the terminal is given back.
    tmux.run(&["send-keys", "-t", "top", "q"]);
    let deadline = Instant::now() + LIMIT;
    while tmux.alive() {
        assert!(Instant::now() < deadline, "top did not quit");
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success());
}
