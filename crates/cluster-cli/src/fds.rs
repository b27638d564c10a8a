//! Descriptors this process inherited: kept from the workers.

use std::os::fd::IntoRawFd;

/// Marks every descriptor above standard error close-on-exec.
///
/// Whatever launched the cluster may have left descriptors open without close-on-exec (a
/// shell's `3>file`, a supervisor's socket, a leaked pipe). Passed on, every worker would hold
/// them: a pipe would never see end-of-file, a lock would never be released, and a descriptor
/// meant for the cluster alone would reach every program it runs. The watcher hands its
/// workers exactly the descriptors they need, so nothing else inherited has to survive `exec`.
/// Runs first in `main`, before any other thread exists, so no number changes meaning while
/// the list is walked.
pub(crate) fn close_inherited_on_exec() {
    // Collected first: the listing includes the directory's own descriptor, closed after it
    // (adopting that number then fails with EBADF, which is ignored like every other refusal).
    let numbers: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(entries) => entries
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
            .filter(|&number| number > 2)
            .collect(),
        // No procfs (a bare chroot): nothing to go by, and nothing worse than before.
        Err(_) => return,
    };
    for number in numbers {
        // `adopt_inherited_fd` is exactly "a descriptor that came through exec without
        // close-on-exec: set the flag" (it refuses any other, harmlessly); it also hands us
        // ownership, which is given straight back so the descriptor stays open for whoever
        // meant this process to have it.
        if let Ok(fd) = fdpass::adopt_inherited_fd(number) {
            let _ = fd.into_raw_fd();
        }
    }
}

/// Raises the soft limit on open descriptors to the hard limit: the watcher holds a few
/// per worker, per listener and per control or metrics client, and a default soft limit of
/// 1024 (or 256) is reached long before the kernel's real bound.
pub(crate) fn raise_descriptor_limit() {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        let _ = rustix::process::setrlimit(rustix::process::Resource::Nofile, raised);
    }
}
