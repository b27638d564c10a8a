//! What the `cluster` process inherits from whoever started it: an output nobody reads must
//! not stall supervision, and a stray inherited descriptor must not reach the workers.

mod support;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use support::{children_of, http_get, wait_for, workspace_bin};

const LIMIT: Duration = Duration::from_secs(20);

/// A `cluster` started by hand (these tests need control of its standard streams and
/// descriptors); killed, with its workers, if the test fails first.
struct Spawned(Child);

impl Spawned {
    fn signal(&self, signal: Signal) {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.0.id() as i32).unwrap(),
            signal,
        )
        .unwrap();
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let workers = children_of(self.0.id());
            let _ = self.0.kill();
            let _ = self.0.wait();
            for pid in workers {
                if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(pid, Signal::KILL);
                }
            }
        }
    }
}

fn scratch(name: &str) -> PathBuf {
    support::scratch_dir("cli-output", name)
}

/// The port the workers wrote to `path`, once they did.
fn port_from(path: &Path) -> u16 {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text.trim().parse().unwrap();
        }
        assert!(Instant::now() < deadline, "no port file {}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Defect 2: with its standard output a pipe nobody reads, the cluster's one thread blocked
/// writing a log line, after which round-robin served nothing and SIGTERM went unheard. The
/// workers here log a few thousand lines a second; requests must keep being answered, the
/// dropped lines must be reported once the output is read again, and SIGTERM must stop the
/// cluster within a few seconds.
#[test]
fn an_unread_output_stalls_neither_serving_nor_stopping() {
    let dir = scratch("unread");
    let port_file = dir.join("port");
    let mut child = Command::new(workspace_bin("cluster"))
        .args(["-w", "2", "--balance", "round-robin"])
        .arg(workspace_bin("cli-worker"))
        .args(["chatty", "127.0.0.1:0"])
        .arg(&port_file)
        .arg("2")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Held open, never read (until later): the pipe fills within milliseconds.
    let stdout = child.stdout.take().unwrap();
    let mut cluster = Spawned(child);
    let port = port_from(&port_file);

    // Several seconds of requests while the output is full: each one answered.
    let serving = Instant::now();
    let mut answered = 0;
    while serving.elapsed() < Duration::from_secs(6) {
        let started = Instant::now();
        let body = http_get(port).unwrap_or_else(|e| panic!("after {answered} answers: {e}"));
        assert!(body.starts_with("worker "), "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "an answer took {:?}",
            started.elapsed()
        );
        answered += 1;
        std::thread::sleep(Duration::from_millis(50));
    }

    // Reading again: the lines dropped meanwhile are reported.
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if !line.contains("chatter") {
                    lines.lock().unwrap().push(line);
                }
            }
        })
    };
    let deadline = Instant::now() + LIMIT;
    loop {
        let reported = lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("log lines dropped") && l.contains("not read"));
        if reported {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no report of dropped lines:\n{}",
            lines.lock().unwrap().join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let stopping = Instant::now();
    cluster.signal(Signal::TERM);
    let status = wait_for(&mut cluster.0, LIMIT);
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "stopping took {:?}",
        stopping.elapsed()
    );
    assert!(status.success(), "{status}");
    reader.join().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The same with nobody ever reading: SIGTERM still stops the cluster, and the exit does not
/// hang on the lines still queued for the full pipe.
#[test]
fn a_never_read_output_does_not_hold_up_the_exit() {
    let dir = scratch("never");
    let port_file = dir.join("port");
    let mut child = Command::new(workspace_bin("cluster"))
        .args(["-w", "1", "--balance", "round-robin"])
        .arg(workspace_bin("cli-worker"))
        .args(["chatty", "127.0.0.1:0"])
        .arg(&port_file)
        .arg("4")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _stdout = child.stdout.take().unwrap();
    let mut cluster = Spawned(child);
    let port = port_from(&port_file);
    // Long enough for the queue of lines to fill and lines to be dropped.
    std::thread::sleep(Duration::from_secs(3));
    assert!(http_get(port).is_ok());
    let stopping = Instant::now();
    cluster.signal(Signal::TERM);
    let status = wait_for(&mut cluster.0, LIMIT);
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "stopping took {:?}",
        stopping.elapsed()
    );
    assert!(status.success(), "{status}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Extra of #12: a descriptor the cluster inherited without close-on-exec is not passed on to
/// every worker.
#[test]
fn an_inherited_descriptor_does_not_reach_the_workers() {
    let dir = scratch("inherited");
    let port_file = dir.join("port");
    let marker = dir.join("inherited-marker");
    let file = std::fs::File::create(&marker).unwrap();
    let mut command = Command::new(workspace_bin("cluster"));
    let number = fdpass::inherit_fd(&mut command, file.into());
    command
        .args(["-w", "2"])
        .arg(workspace_bin("cli-worker"))
        .args(["serve", "127.0.0.1:0"])
        .arg(&port_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut cluster = Spawned(command.spawn().unwrap());
    port_from(&port_file);
    let deadline = Instant::now() + LIMIT;
    let workers = loop {
        let workers = children_of(cluster.0.id());
        if workers.len() == 2 {
            break workers;
        }
        assert!(Instant::now() < deadline, "workers: {workers:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let links_of = |pid: u32| -> Vec<PathBuf> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .filter_map(|entry| std::fs::read_link(entry.path()).ok())
            .collect()
    };
    // The set-up worked: the cluster itself did inherit it (and keeps it).
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/fd/{number}", cluster.0.id())).unwrap(),
        marker
    );
    for worker in workers {
        let links = links_of(worker);
        assert!(
            !links.contains(&marker),
            "worker {worker} inherited it: {links:?}"
        );
    }
    cluster.signal(Signal::TERM);
    assert!(wait_for(&mut cluster.0, LIMIT).success());
    std::fs::remove_dir_all(&dir).unwrap();
}
