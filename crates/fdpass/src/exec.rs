//! What a child process must do between `fork` and `exec`, in the child: join a cgroup, give
//! up privileges, keep to its CPUs.
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

/// The user and group a child runs as: see [`run_as`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    /// The user id.
    pub uid: u32,
    /// The group id (the only group: supplementary groups are cleared).
    pub gid: u32,
}

/// Makes the child that `command` spawns give up this process's privileges before it runs
/// a single instruction of its program: supplementary groups cleared, then `setgid`, then
/// `setuid` (real, effective and saved ids all changed, so none can be taken back), then
/// `PR_SET_NO_NEW_PRIVS` (no set-uid program or file capability gives any back either). A
/// child that cannot drop them does not run (the spawn fails). Register it before
/// [`kill_with_parent`](crate::kill_with_parent): the kernel clears the parent-death
/// signal when credentials change.
pub fn run_as(command: &mut Command, credentials: Credentials) {
    let uid = rustix::process::Uid::from_raw(credentials.uid);
    let gid = rustix::process::Gid::from_raw(credentials.gid);
    let hook = move || -> std::io::Result<()> {
        // The raw system calls change this thread only; between fork and exec the child has
        // no other thread.
        rustix::thread::set_thread_groups(&[])?;
        rustix::thread::set_thread_res_gid(gid, gid, gid)?;
        rustix::thread::set_thread_res_uid(uid, uid, uid)?;
        rustix::thread::set_no_new_privs(true)?;
        Ok(())
    };
    // SAFETY: the hook makes four async-signal-safe system calls on values copied into the
    // closure before the fork; it allocates nothing (an empty slice) and takes no lock.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(hook);
    }
}

/// Makes the child that `command` spawns run on `cpus` only (`sched_setaffinity` before
/// `exec`, so every thread it ever starts inherits the set). CPUs beyond the set's capacity
/// are ignored; a set the kernel refuses (no CPU of it online) leaves the child unpinned
/// rather than unable to start.
pub fn pin_to_cpus(command: &mut Command, cpus: &[usize]) {
    let mut set = rustix::thread::CpuSet::new();
    for &cpu in cpus
        .iter()
        .filter(|&&c| c < rustix::thread::CpuSet::MAX_CPU)
    {
        set.set(cpu);
    }
    let hook = move || -> std::io::Result<()> {
        let _ = rustix::thread::sched_setaffinity(None, &set);
        Ok(())
    };
    // SAFETY: one async-signal-safe system call on a set built before the fork, moved into
    // the closure; no allocation, no lock.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(hook);
    }
}
