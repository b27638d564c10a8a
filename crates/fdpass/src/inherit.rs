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
