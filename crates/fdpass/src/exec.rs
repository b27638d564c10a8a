//! What a child process must do between `fork` and `exec`, in the child: join a cgroup.
//! Each hook is async-signal-safe (a few system calls on values prepared before the fork,
//! no allocation, no lock), which is what makes `pre_exec` sound.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;

use std::os::fd::OwnedFd;

/// Makes the child that `command` spawns join a cgroup before it runs a single instruction
/// of its program: `procs` is that cgroup's `cgroup.procs`, opened for writing (and
/// close-on-exec) before the spawn. Whatever the child forks later, daemons that leave its
/// process group and session included, stays in the cgroup, so one write to `cgroup.kill`
/// ends them all. A child that cannot join (the kernel refuses the move) runs anyway,
/// outside it: containment is the caller's second line, never a reason not to start.
pub fn join_cgroup(command: &mut Command, procs: OwnedFd) {
    let procs = Arc::new(procs);
    let hook = move || -> std::io::Result<()> {
        // "0" moves the writing process itself: this child, between fork and exec.
        let _ = rustix::io::write(&*procs, b"0");
        Ok(())
    };
    // SAFETY: the hook makes one `write` system call (async-signal-safe) on a descriptor the
    // closure keeps open, with a static buffer; it allocates nothing and takes no lock.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(hook);
    }
}
