//! `--log-file`: appended to, rotated by size, reopened on request; never a line split.
//!
//! The file is opened in append mode, so logrotate's `copytruncate` works (after the
//! truncation the next line goes to the new end, not to a hole at the old offset). With
//! `--log-max-size`, a line that would take the file past the size first rotates it:
//! `FILE.N` goes, `FILE.1` … `FILE.N-1` move up one, `FILE` becomes `FILE.1` and a new `FILE`
//! is opened (`--log-keep N`, 0: no copy kept). A reopen (`cluster logs --reopen`, or
//! `--reopen-signal`) opens `FILE` again at the next line: logrotate's `create` mode, which
//! renamed the file away. All of it runs on the log writer's thread, one whole line per
//! write, so no line is ever split between two files nor interleaved with another; and the
//! supervision thread never waits for any of it.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Asks the log file to be opened again at its next line.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reopen(Arc<AtomicBool>);

impl Reopen {
    pub(crate) fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The log file being written.
#[derive(Debug)]
pub(crate) struct LogFile {
    path: PathBuf,
    file: File,
    max_size: Option<u64>,
    keep: usize,
    /// Bytes in the file as far as we know (a `copytruncate` makes it an overestimate,
    /// checked before rotating).
    written: u64,
    reopen: Reopen,
}

impl LogFile {
    /// Opens `path` for appending (created 0640 if missing; never through a symbolic link,
    /// which another user could have planted where the log goes).
    ///
    /// # Errors
    /// When it cannot be opened.
    pub(crate) fn open(path: &Path, max_size: Option<u64>, keep: usize) -> std::io::Result<Self> {
        let file = open(path)?;
        let written = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            file,
            max_size,
            keep,
            written,
            reopen: Reopen::default(),
        })
    }

    /// The handle that asks for a reopen.
    pub(crate) fn reopen_handle(&self) -> Reopen {
        self.reopen.clone()
    }

    /// Moves the full file away (`FILE.1`, older ones up, the oldest beyond `keep` gone) and
    /// starts a new one.
    fn rotate(&mut self) -> std::io::Result<()> {
        let numbered = |n: usize| {
            let mut name = self.path.clone().into_os_string();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        if self.keep == 0 {
            ignore_missing(std::fs::remove_file(&self.path))?;
        } else {
            ignore_missing(std::fs::remove_file(numbered(self.keep)))?;
            for n in (1..self.keep).rev() {
                ignore_missing(std::fs::rename(numbered(n), numbered(n + 1)))?;
            }
            ignore_missing(std::fs::rename(&self.path, numbered(1)))?;
        }
        self.reopen_now()
    }

    fn reopen_now(&mut self) -> std::io::Result<()> {
        self.file = open(&self.path)?;
        self.written = self.file.metadata()?.len();
        Ok(())
    }
}

impl Write for LogFile {
    /// Writes `line` (one formatted event) whole, rotating or reopening before it.
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        if self.reopen.0.swap(false, Ordering::SeqCst) {
            self.reopen_now()?;
        }
        if let Some(max) = self.max_size
            && self.written > 0
            && self.written + line.len() as u64 > max
        {
            // Truncated behind our back (copytruncate)? Then there is room again.
            self.written = self.file.metadata()?.len();
            if self.written > 0 && self.written + line.len() as u64 > max {
                self.rotate()?;
            }
        }
        self.file.write_all(line)?;
        self.written += line.len() as u64;
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

fn open(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

fn ignore_missing(result: std::io::Result<()>) -> std::io::Result<()> {
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(test: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("cluster-logfile-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn rotation_keeps_n_files_of_whole_lines_under_the_size() {
        let dir = dir("rotate");
        let path = dir.join("cluster.log");
        let mut log = LogFile::open(&path, Some(100), 2).unwrap();
        for n in 0..40 {
            log.write_all(format!("line {n:04} of the log\n").as_bytes())
                .unwrap();
        }
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        files.sort();
        assert_eq!(files, ["cluster.log", "cluster.log.1", "cluster.log.2"]);
        let mut lines = Vec::new();
        for name in ["cluster.log.2", "cluster.log.1", "cluster.log"] {
            let text = std::fs::read_to_string(dir.join(name)).unwrap();
            assert!(text.len() <= 100, "{name}: {}", text.len());
            assert!(text.ends_with('\n'));
            lines.extend(text.lines().map(str::to_owned));
        }
        // The newest lines, in order, each whole.
        let expected: Vec<String> = (40 - lines.len()..40)
            .map(|n| format!("line {n:04} of the log"))
            .collect();
        assert_eq!(lines, expected);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn copytruncate_and_reopen_are_followed() {
        let dir = dir("reopen");
        let path = dir.join("cluster.log");
        let mut log = LogFile::open(&path, Some(1000), 1).unwrap();
        log.write_all(b"before\n").unwrap();
        // copytruncate: the next line lands at the start of the emptied file.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        log.write_all(b"after truncate\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after truncate\n");
        // create mode: the file was renamed away; a reopen starts a new one.
        std::fs::rename(&path, dir.join("rotated")).unwrap();
        log.reopen_handle().request();
        log.write_all(b"new file\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new file\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_symbolic_link_is_not_followed() {
        let dir = dir("link");
        let path = dir.join("cluster.log");
        std::os::unix::fs::symlink(dir.join("elsewhere"), &path).unwrap();
        assert!(LogFile::open(&path, None, 0).is_err());
        assert!(!dir.join("elsewhere").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
