//! The pid file against another user's symbolic links: neither one planted at a temporary
//! name the cluster might use nor one at the pid file's own path is ever followed.

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::process::Signal;
use support::{ClusterProcess, workspace_bin};

const LIMIT: Duration = Duration::from_secs(20);

/// How many of the next pids get a planted link: room for whatever else starts processes on
/// the machine (other tests, in parallel) between our look and the cluster's start.
const PLANTED: u32 = 400;

fn scratch(name: &str) -> PathBuf {
    support::scratch_dir("cli-pid-file", name)
}

fn read_number(path: &str) -> u32 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The victim's content, mode, owner and inode, to compare before and after.
fn fingerprint(victim: &Path) -> (String, u32, u32, u64) {
    let meta = std::fs::symlink_metadata(victim).unwrap();
    (
        std::fs::read_to_string(victim).unwrap(),
        meta.mode(),
        meta.uid(),
        meta.ino(),
    )
}

fn cluster_args<'a>(pid_file: &'a str, worker: &'a str) -> [&'a str; 7] {
    ["-w", "1", "-p", pid_file, worker, "serve", "127.0.0.1:0"]
}

/// Defect 9: the temporary file was `<stem>.tmp.<pid>`, written following symbolic links, so
/// whoever could write to the pid file's directory could make a root-run cluster overwrite
/// any file. Links planted at every name the next few hundred pids would give must all be
/// left alone.
#[test]
fn links_planted_at_predictable_temporary_names_are_not_followed() {
    let dir = scratch("planted");
    let victim = dir.join("victim");
    std::fs::write(&victim, "precious: must never change\n").unwrap();
    let before = fingerprint(&victim);
    let pid_file = dir.join("cluster.pid");

    // The next pids in this pid namespace, wrapping as the kernel does (past pid_max, the
    // kernel starts again above the pids reserved for daemons, 300).
    let last = read_number("/proc/sys/kernel/ns_last_pid");
    let max = read_number("/proc/sys/kernel/pid_max");
    let planted: Vec<u32> = (1..=PLANTED)
        .map(|k| {
            let pid = last + k;
            if pid < max { pid } else { 300 + (pid - max) }
        })
        .collect();
    for pid in &planted {
        std::os::unix::fs::symlink(&victim, dir.join(format!("cluster.tmp.{pid}"))).unwrap();
    }

    let worker = workspace_bin("cli-worker");
    let mut cluster = ClusterProcess::start(&cluster_args(
        pid_file.to_str().unwrap(),
        worker.to_str().unwrap(),
    ));
    let pid = cluster.child.id();
    assert!(
        planted.contains(&pid),
        "the prediction missed: the cluster got pid {pid}, links were planted for {}..",
        last + 1
    );
    cluster.wait_for("all workers ready", LIMIT);
    assert_eq!(fingerprint(&victim), before, "the victim was written");
    let meta = std::fs::symlink_metadata(&pid_file).unwrap();
    assert!(meta.is_file(), "the pid file is a file of its own");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap(),
        format!("{pid}\n")
    );
    assert_eq!(meta.mode() & 0o7777 & !0o644, 0, "mode at most 0644");

    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success(), "{}", cluster.output());
    assert_eq!(fingerprint(&victim), before, "the victim was written");
    assert!(!pid_file.exists(), "removed on exit");
    // Every planted link is still there, untouched, and no temporary file was left behind.
    for pid in &planted {
        let link = dir.join(format!("cluster.tmp.{pid}"));
        assert_eq!(std::fs::read_link(&link).unwrap(), victim);
    }
    let entries = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(
        entries,
        planted.len() + 1,
        "only the links and the victim remain"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A link at the pid file's own path is neither read through (here it points at a file
/// naming a running process, which would make the cluster refuse to start) nor written
/// through: it is replaced by the cluster's own file.
#[test]
fn a_link_at_the_pid_file_path_is_not_followed() {
    let dir = scratch("link");
    let victim = dir.join("victim.pid");
    // A running process: this test.
    std::fs::write(&victim, format!("{}\n", std::process::id())).unwrap();
    let before = fingerprint(&victim);
    let pid_file = dir.join("cluster.pid");
    std::os::unix::fs::symlink(&victim, &pid_file).unwrap();

    let worker = workspace_bin("cli-worker");
    let mut cluster = ClusterProcess::start(&cluster_args(
        pid_file.to_str().unwrap(),
        worker.to_str().unwrap(),
    ));
    cluster.wait_for("all workers ready", LIMIT);
    assert!(
        cluster.output().contains("the pid file is a symbolic link"),
        "{}",
        cluster.output()
    );
    let meta = std::fs::symlink_metadata(&pid_file).unwrap();
    assert!(meta.is_file(), "the link was replaced by a file");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap(),
        format!("{}\n", cluster.child.id())
    );
    assert_eq!(fingerprint(&victim), before, "the victim was written");

    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success(), "{}", cluster.output());
    assert!(!pid_file.exists(), "removed on exit");
    assert_eq!(
        fingerprint(&victim),
        before,
        "the victim was removed or written"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
