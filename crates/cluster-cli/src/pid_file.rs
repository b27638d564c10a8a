//! The pid file: written atomically, never through anyone's symbolic link, removed on exit.
//!
//! Pid files live in shared directories (`/tmp`, `/run`, `/var/run`) and are written by root.
//! A temporary file with a predictable name (`app.tmp.<pid>`), written by a call that follows
//! symbolic links, let another user plant `app.tmp.<next pid>` pointing at a file of root's
//! and have the cluster overwrite it. So the temporary file gets a random name and is created
//! with `O_CREAT | O_EXCL | O_NOFOLLOW` (an existing entry of any kind, a planted link
//! included, is never opened), then renamed over the pid file (`rename` replaces a link at
//! the destination rather than following it). An existing pid file is read without following
//! a link either.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rustix::fs::{CWD, FileType, Mode, OFlags};
use rustix::io::Errno;

/// How many random names are tried before giving up; each collision is a 1 in 2^64 event,
/// so a second try is already the sign of someone planting every name.
const ATTEMPTS: usize = 4;

/// A pid file this process wrote; removed on drop if it still names this process.
#[derive(Debug)]
pub(crate) struct PidFile {
    path: PathBuf,
    pid: i32,
}

/// What is at the pid file's path.
#[derive(Debug, PartialEq, Eq)]
enum Recorded {
    /// Nothing, or nothing we can read: free to replace.
    Nothing,
    /// A symbolic link: never followed, replaced by the rename.
    Link,
    /// A regular file naming this pid.
    Pid(i32),
}

impl PidFile {
    /// Writes this process's pid to `path`.
    ///
    /// # Errors
    /// When `path` names a running process (a cluster already running), or cannot be
    /// written.
    pub(crate) fn create(path: &Path) -> anyhow::Result<Self> {
        match recorded(path) {
            Recorded::Pid(pid) if process_runs(pid) => bail!(
                "pid file {} names a running process ({pid}); is the cluster already running?",
                path.display()
            ),
            Recorded::Link => tracing::warn!(
                pid_file = %path.display(),
                "the pid file is a symbolic link: replaced by a file, not followed"
            ),
            Recorded::Pid(_) | Recorded::Nothing => {}
        }
        Self::take_over(path)
    }
}

impl PidFile {
    /// Writes this process's pid to `path` whatever it names now: a new watcher taking over
    /// from the old one it names.
    ///
    /// # Errors
    /// When `path` cannot be written.
    pub(crate) fn take_over(path: &Path) -> anyhow::Result<Self> {
        let pid = rustix::process::getpid().as_raw_nonzero().get();
        write_atomically(path, format!("{pid}\n").as_bytes())
            .with_context(|| format!("cannot write pid file {}", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            pid,
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Only our own file: never one that someone put there since.
        if recorded(&self.path) == Recorded::Pid(self.pid) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn process_runs(pid: i32) -> bool {
    rustix::process::Pid::from_raw(pid)
        .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok())
}

/// Reads what the pid file records, without following a link, blocking on a FIFO or reading
/// more than a pid's worth of bytes.
fn recorded(path: &Path) -> Recorded {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let fd = match rustix::fs::open(path, flags | OFlags::NOCTTY, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::LOOP) => return Recorded::Link,
        Err(_) => return Recorded::Nothing,
    };
    let regular = rustix::fs::fstat(&fd)
        .is_ok_and(|stat| FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile);
    if !regular {
        return Recorded::Nothing;
    }
    let mut buf = [0u8; 32];
    let Ok(read) = rustix::io::read(&fd, &mut buf) else {
        return Recorded::Nothing;
    };
    std::str::from_utf8(&buf[..read])
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
        .map_or(Recorded::Nothing, Recorded::Pid)
}

/// Writes `contents` to a new file with a random name beside `path`, then renames it over
/// `path`.
fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let Some(stem) = path.file_stem() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the path has no file name",
        ));
    };
    for _ in 0..ATTEMPTS {
        let mut name = OsString::from(stem);
        name.push(format!(".tmp.{:016x}", random_u64()?));
        let temporary = path.with_file_name(name);
        let flags = OFlags::WRONLY
            | OFlags::CREATE
            | OFlags::EXCL
            | OFlags::NOFOLLOW
            | OFlags::CLOEXEC
            | OFlags::NOCTTY;
        let fd = match rustix::fs::openat(CWD, &temporary, flags, Mode::from_raw_mode(0o644)) {
            Ok(fd) => fd,
            Err(Errno::EXIST) => continue,
            Err(e) => return Err(e.into()),
        };
        let written = std::fs::File::from(fd)
            .write_all(contents)
            .and_then(|()| std::fs::rename(&temporary, path));
        if written.is_err() {
            let _ = std::fs::remove_file(&temporary);
        }
        return written;
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        "every random temporary name was taken",
    ))
}

fn random_u64() -> std::io::Result<u64> {
    let mut bytes = [0u8; 8];
    loop {
        match rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty()) {
            Ok(8) => return Ok(u64::from_ne_bytes(bytes)),
            // Requests of up to 256 bytes are never cut short once the pool is initialised;
            // a signal can still interrupt the wait for it.
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cluster-pid-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn reads_a_pid_but_not_through_a_link() {
        let dir = scratch("read");
        let file = dir.join("a.pid");
        assert_eq!(recorded(&file), Recorded::Nothing);
        std::fs::write(&file, "1234\n").unwrap();
        assert_eq!(recorded(&file), Recorded::Pid(1234));
        let link = dir.join("b.pid");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(recorded(&link), Recorded::Link);
        std::fs::write(&file, "not a pid").unwrap();
        assert_eq!(recorded(&file), Recorded::Nothing);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writes_atomically_with_mode_0644_and_leaves_no_temporary_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("write");
        let file = dir.join("c.pid");
        write_atomically(&file, b"42\n").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "42\n");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        // The umask may take bits away, never add them.
        assert_eq!(mode & !0o644, 0, "{mode:o}");
        let entries: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(entries.len(), 1, "{entries:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
