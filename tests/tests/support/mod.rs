//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;

/// What `/proc/self/fd/N` points at, e.g. `pipe:[1234]` or `socket:[5678]`.
pub fn link_of(fd: &impl AsRawFd) -> String {
    link_of_number(fd.as_raw_fd()).expect("descriptor is open")
}

fn link_of_number(fd: RawFd) -> Option<String> {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// How many descriptors of this process refer to `target` (a `link_of` value). Unlike a plain
/// descriptor count, this stays exact while other tests in the same process open files.
pub fn refs_to(target: &str) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("procfs")
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path())
                .map(|p| p.to_string_lossy() == target)
                .unwrap_or(false)
        })
        .count()
}

/// A program built by this workspace: a helper of this package or a binary of another.
pub fn workspace_bin(name: &str) -> PathBuf {
    // Test executables live in target/<profile>/deps; binaries one level up, examples beside.
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target/<profile>");
    for candidate in [
        profile_dir.join(name),
        profile_dir.join("examples").join(name),
    ] {
        if candidate.exists() {
            return candidate;
        }
    }
    panic!(
        "{name} is not built in {}: run `cargo build --workspace --all-targets`",
        profile_dir.display()
    );
}

/// Spawns a helper of this package with one end of a fresh socket pair inherited as
/// `FDPASS_FD`; returns our end (blocking mode) and the child.
pub fn spawn_peer(bin: &str, args: &[&str]) -> (fdpass::FdSocket, std::process::Child) {
    let (ours, theirs) = fdpass::FdSocket::pair().expect("socket pair");
    let mut command = std::process::Command::new(workspace_bin(bin));
    let number = fdpass::inherit_fd(&mut command, theirs.into());
    command
        .args(args)
        .env("FDPASS_FD", number.to_string())
        .stdout(std::process::Stdio::piped());
    let child = command.spawn().expect("spawn helper");
    (ours, child)
}

/// Waits for a child, at most `limit`; kills it and panics past that.
pub fn wait_for(
    child: &mut std::process::Child,
    limit: std::time::Duration,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child {} did not exit within {limit:?}", child.id());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
