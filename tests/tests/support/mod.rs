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
