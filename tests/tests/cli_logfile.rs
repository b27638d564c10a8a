//! `--log-file` under a flood of worker lines: rotation by size (`--log-max-size`,
//! `--log-keep`) never over its bound, never a split or repeated line; logrotate's
//! `copytruncate` (append mode: no hole) and `create` with `cluster logs --reopen`.

mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use support::{ClusterProcess, workspace_bin};

const LIMIT: Duration = Duration::from_secs(30);

fn dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cluster-logfile-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A cluster of `chatty` workers writing `lines` lines a millisecond each, logging to
/// `dir/cluster.log` with `extra` options.
fn start(dir: &Path, lines: &str, extra: &[&str]) -> ClusterProcess {
    let log = dir.join("cluster.log");
    let control = dir.join("control/cluster.sock");
    let port_file = dir.join("port");
    let mut args = vec![
        "-w",
        "2",
        "--log-file",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "--control",
        control.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let worker = workspace_bin("cli-worker");
    args.extend([
        worker.to_str().unwrap(),
        "chatty",
        "127.0.0.1:0",
        port_file.to_str().unwrap(),
        lines,
    ]);
    let cluster = ClusterProcess::start(&args);
    let deadline = Instant::now() + LIMIT;
    while !port_file.exists() {
        assert!(Instant::now() < deadline, "no worker listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    cluster
}

/// Every log file in `dir` (the current one and rotated copies), and their total size.
fn log_files(dir: &Path) -> (Vec<PathBuf>, u64) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("cluster.log")
        })
        .collect();
    files.sort();
    let size = files
        .iter()
        .map(|f| f.metadata().map_or(0, |m| m.len()))
        .sum();
    (files, size)
}

/// Checks every line of `files` (oldest first): whole JSON, and no (worker, count) chatter
/// line twice. Returns how many chatter lines there were, and how many are missing between
/// each worker's first and last line kept (the files kept must hold every line after the
/// oldest one still there).
fn check_lines(files: &[PathBuf]) -> (usize, u64) {
    let mut seen = HashSet::new();
    let mut span: std::collections::HashMap<u64, (u64, u64)> = Default::default();
    for file in files {
        let bytes = std::fs::read(file).unwrap();
        assert!(
            !bytes.contains(&0),
            "{}: a hole of NUL bytes",
            file.display()
        );
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{}: a cut line at the end",
            file.display()
        );
        for line in text.lines() {
            let event: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: not a whole line ({e}): {line}", file.display()));
            let fields = &event["fields"];
            // The worker's own fields arrive inside its message: `chatter … count=N`.
            let count = fields["message"]
                .as_str()
                .and_then(|m| m.rsplit_once("count="))
                .and_then(|(_, n)| n.parse::<u64>().ok());
            if let (Some(worker), Some(count)) = (fields["worker"].as_u64(), count) {
                assert!(seen.insert((worker, count)), "line {worker}/{count} twice");
                let (low, high) = span.entry(worker).or_insert((count, count));
                (*low, *high) = ((*low).min(count), (*high).max(count));
            }
        }
    }
    let spanned: u64 = span.values().map(|(low, high)| high - low + 1).sum();
    (seen.len(), spanned - seen.len() as u64)
}

fn cluster_command(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(workspace_bin("cluster"))
        .args(args)
        .arg("--control")
        .arg(dir.join("control/cluster.sock"))
        .output()
        .unwrap()
}

#[test]
fn rotation_by_size_stays_within_its_bound_with_whole_lines() {
    let dir = dir("rotate");
    // Two workers, 10 lines a millisecond each: several megabytes a second.
    let mut cluster = start(&dir, "10", &["--log-max-size", "1M", "--log-keep", "3"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut largest = 0;
    while Instant::now() < deadline {
        largest = largest.max(log_files(&dir).1);
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = cluster_command(&dir, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success());
    let (files, _) = log_files(&dir);
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "cluster.log",
            "cluster.log.1",
            "cluster.log.2",
            "cluster.log.3"
        ]
    );
    // Four files of at most 1 MiB each (and what the size check missed of a sample).
    assert!(largest <= 4 * (1 << 20) + 4096, "{largest} bytes on disk");
    // Oldest first: FILE.3, FILE.2, FILE.1, FILE.
    let oldest_first: Vec<PathBuf> = files
        .iter()
        .skip(1)
        .rev()
        .chain(&files[..1])
        .cloned()
        .collect();
    let (lines, missing) = check_lines(&oldest_first);
    let dropped = status["log_lines_dropped"]
        .as_u64()
        .expect("a count of dropped lines");
    eprintln!(
        "rotation: {lines} chatter lines kept, {missing} missing among them, at most {largest} bytes on disk, {dropped} dropped"
    );
    assert!(lines > 5_000, "{lines}");
    assert!(
        missing <= dropped,
        "{missing} lines missing, {dropped} counted as dropped"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs logrotate on `config` (its state in `dir`).
fn logrotate(dir: &Path, config: &str) {
    let conf = dir.join("logrotate.conf");
    std::fs::write(&conf, config).unwrap();
    // In /usr/sbin, which a non-root PATH may not hold.
    let program = ["/usr/sbin/logrotate", "/usr/bin/logrotate"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("logrotate");
    let output = Command::new(program)
        .arg("-f")
        .arg("-s")
        .arg(dir.join("logrotate.state"))
        .arg(&conf)
        .output()
        .expect("logrotate (tests/peers/install.sh installs it)");
    assert!(output.status.success(), "{output:?}");
}

#[test]
fn logrotate_copytruncate_and_create_with_reopen_both_work() {
    let dir = dir("logrotate");
    let mut cluster = start(&dir, "2", &["--reopen-signal", "USR1"]);
    let log = dir.join("cluster.log");
    std::thread::sleep(Duration::from_millis(300));
    // copytruncate: the file is copied, then emptied in place; the next line must land at
    // its start (append mode), not after a hole the size of what was there.
    logrotate(
        &dir,
        &format!("{} {{\n  copytruncate\n  rotate 2\n}}\n", log.display()),
    );
    std::thread::sleep(Duration::from_millis(300));
    let copied = dir.join("cluster.log.1");
    assert!(copied.metadata().unwrap().len() > 0);
    let (_, missing) = check_lines(&[copied.clone(), log.clone()]);
    eprintln!("copytruncate: {missing} lines lost between logrotate's copy and its truncation");
    // create: the file is renamed away and a new one made; `cluster logs --reopen` moves the
    // writer to the new one, and the renamed file stops growing.
    let reopen = format!(
        "{} logs --reopen --control {}",
        workspace_bin("cluster").display(),
        dir.join("control/cluster.sock").display()
    );
    logrotate(
        &dir,
        &format!(
            "{} {{\n  create\n  rotate 3\n  postrotate\n    {reopen}\n  endscript\n}}\n",
            log.display()
        ),
    );
    std::thread::sleep(Duration::from_millis(200));
    let renamed = dir.join("cluster.log.1");
    let size = renamed.metadata().unwrap().len();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        renamed.metadata().unwrap().len(),
        size,
        "the renamed file still grows"
    );
    let new = std::fs::read_to_string(&log).unwrap();
    assert!(new.contains("log file reopened"), "{new:.300}");
    // --reopen-signal USR1: the signal reopens the log, and does not restart the workers.
    std::fs::rename(&log, dir.join("moved.log")).unwrap();
    cluster.signal(Signal::USR1);
    let deadline = Instant::now() + LIMIT;
    while !log.exists() {
        assert!(Instant::now() < deadline, "USR1 did not reopen the log");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = cluster_command(&dir, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["rolling_restarts_completed"], 0, "{status}");
    assert_eq!(
        status["rolling_restart"],
        serde_json::Value::Null,
        "{status}"
    );
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success());
    // From the `create` rotation on, reopening loses nothing: the renamed file, the file the
    // signal moved away, the new one.
    let since_create = [renamed, dir.join("moved.log"), log];
    let (lines, missing) = check_lines(&since_create);
    eprintln!("create and reopen: {lines} chatter lines, {missing} missing");
    assert_eq!(missing, 0);
    let _ = std::fs::remove_dir_all(&dir);
}
