//! Handing a descriptor to a child process on purpose.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;

use rustix::io::{FdFlags, fcntl_setfd};

/// Makes `fd` survive `exec` in the child that `command` spawns, at the same descriptor number
/// (returned, to be passed to the child, for example in an environment variable).
///
/// The descriptor stays close-on-exec in this process, so no other child ever inherits it: the
/// flag is cleared only in the forked child, just before `exec`. The command keeps `fd` open
/// for as long as the command itself lives. For `tokio::process::Command`, call this on
/// `command.as_std_mut()`.
///
/// ```
/// let (ours, theirs) = fdpass::FdSocket::pair()?;
/// let mut command = std::process::Command::new("true");
/// let number = fdpass::inherit_fd(&mut command, theirs.into());
/// command.env("MY_FD", number.to_string());
/// assert!(command.status()?.success());
/// # drop(ours);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn inherit_fd(command: &mut Command, fd: OwnedFd) -> RawFd {
    let fd = Arc::new(fd);
    let number = fd.as_raw_fd();
    let hook = move || -> std::io::Result<()> {
        // Runs between fork and exec: `fcntl` is async-signal-safe and allocates nothing.
        fcntl_setfd(&*fd, FdFlags::empty())?;
        Ok(())
    };
    // SAFETY: the hook only calls `fcntl`, which is async-signal-safe, on a descriptor the
    // closure keeps open; it touches no lock and allocates no memory in the forked child.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(hook);
    }
    number
}

/// Takes ownership of a descriptor this process inherited on purpose (see [`inherit_fd`]):
/// the child's side, given the number its parent passed along.
///
/// The descriptor must be open and *not* close-on-exec (which is what surviving `exec` on
/// purpose looks like; everything Rust opens is close-on-exec); each number is adopted at most
/// once per process. It is made close-on-exec again, so it does not leak into this process's
/// own children.
///
/// # Errors
/// `EBADF` when the number is not open; `InvalidInput` when it is close-on-exec (so not an
/// inherited descriptor) or was already adopted.
pub fn adopt_inherited_fd(number: RawFd) -> std::io::Result<OwnedFd> {
    use std::collections::HashSet;
    use std::sync::{Mutex, PoisonError};
    static ADOPTED: Mutex<Option<HashSet<RawFd>>> = Mutex::new(None);

    let invalid = |why: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("fd {number}: {why}"),
        )
    };
    let mut adopted = ADOPTED.lock().unwrap_or_else(PoisonError::into_inner);
    let adopted = adopted.get_or_insert_with(HashSet::new);
    if number < 0 || adopted.contains(&number) {
        return Err(invalid("already adopted or negative"));
    }
    // SAFETY: a borrow for the duration of the two `fcntl` calls below; an unopened number
    // yields EBADF, and the checks decide whether we may take ownership at all.
    #[allow(unsafe_code)]
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(number) };
    let flags = rustix::io::fcntl_getfd(borrowed)?;
    if flags.contains(FdFlags::CLOEXEC) {
        return Err(invalid("close-on-exec, so not inherited"));
    }
    fcntl_setfd(borrowed, FdFlags::CLOEXEC)?;
    adopted.insert(number);
    // SAFETY: the descriptor is open, came through `exec` deliberately (not close-on-exec),
    // and the registry above guarantees this is its only owner in the process.
    #[allow(unsafe_code)]
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(number) })
}

/// Makes the child that `command` spawns receive `SIGKILL` when this process dies
/// (`PR_SET_PDEATHSIG`), from before it runs a single instruction of the program: a
/// supervisor killed with `SIGKILL` leaves no orphan behind, even one that never got far
/// enough to notice. A program can still choose a gentler signal for itself afterwards.
///
/// The signal follows the *thread* that spawned the child: spawn from a thread that lives as
/// long as the supervisor (a tokio runtime's worker threads do; its blocking pool's do not).
/// If this process is already gone when the child sets the flag, the child exits before
/// `exec`.
pub fn kill_with_parent(command: &mut Command) {
    let parent = rustix::process::getpid();
    let hook = move || -> std::io::Result<()> {
        // Between fork and exec: two system calls, no allocation, no lock.
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
        if rustix::process::getppid() != Some(parent) {
            return Err(rustix::io::Errno::SRCH.into());
        }
        Ok(())
    };
    // SAFETY: the hook only makes two async-signal-safe system calls (`prctl`, `getppid`);
    // it touches no lock and allocates no memory in the forked child.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(hook);
    }
}

/// Makes `fds` the child's descriptors `first`, `first + 1`, … (in order), not close-on-exec:
/// how systemd hands listening sockets to a program (`LISTEN_FDS`, from descriptor 3).
///
/// The descriptors stay close-on-exec in this process and are kept open by the command. In the
/// forked child each is first moved above the target range, then `dup2`ed into place, then its
/// close-on-exec flag is cleared explicitly: `dup2(3, 3)` does nothing, not even clear the
/// flag, so a descriptor that already had its target number would otherwise vanish at `exec`.
/// Register this hook after every [`inherit_fd`] of the same command, and give those
/// descriptors numbers above the range (they are untouched unless they sit inside it).
pub fn inherit_fds_at(command: &mut Command, fds: Vec<OwnedFd>, first: RawFd) {
    let count = fds.len() as RawFd;
    // Allocated before the fork: the hook only writes into it.
    let mut moved: Vec<RawFd> = Vec::with_capacity(fds.len());
    let hook = move || -> std::io::Result<()> {
        moved.clear();
        for fd in &fds {
            // Above the target range, so no later dup2 overwrites a source still needed.
            let high = rustix::io::fcntl_dupfd_cloexec(fd, first + count)?;
            moved.push(high.as_raw_fd());
            // The child's copy lives until exec closes it (it is close-on-exec).
            std::mem::forget(high);
        }
        for (index, &high) in moved.iter().enumerate() {
            let target = first + index as RawFd;
            // SAFETY: `high` was opened just above and is owned by nobody but this hook;
            // borrowing it for the dup2 is sound.
            #[allow(unsafe_code)]
            let source = unsafe { std::os::fd::BorrowedFd::borrow_raw(high) };
            // SAFETY: only `dup2`'s target, never read, and forgotten below rather than closed:
            // whatever the number held before is replaced on purpose by the listener.
            #[allow(unsafe_code)]
            let mut target_fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(target) };
            let result = rustix::io::dup2(source, &mut target_fd);
            let cleared = fcntl_setfd(&target_fd, FdFlags::empty());
            // Never close the target: it must survive exec.
            std::mem::forget(target_fd);
            result?;
            cleared?;
        }
        Ok(())
    };
    // SAFETY: the hook only calls `fcntl` and `dup2`, which are async-signal-safe, on
    // descriptors it owns or takes over; it writes into a vector whose capacity was reserved
    // before the fork, so it never allocates, and it takes no lock.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(hook);
    }
}
