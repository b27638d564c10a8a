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
//!
//! With `--log-compress` the copies are gzipped (`FILE.1.gz` … `FILE.N.gz`): the newest is
//! compressed on a thread of its own while the new `FILE` is written, and a rotation that
//! comes before it is done waits for it (one compression at a time, never a copy lost).

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
    /// Gzip the rotated copies.
    compress: bool,
    /// The newest copy being compressed.
    compressing: Option<std::thread::JoinHandle<()>>,
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
    pub(crate) fn open(
        path: &Path,
        max_size: Option<u64>,
        keep: usize,
        compress: bool,
    ) -> std::io::Result<Self> {
        let file = open(path)?;
        let written = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            file,
            max_size,
            keep,
            compress,
            compressing: None,
            written,
            reopen: Reopen::default(),
        })
    }

    /// The handle that asks for a reopen.
    pub(crate) fn reopen_handle(&self) -> Reopen {
        self.reopen.clone()
    }

    /// Moves the full file away (`FILE.1`, older ones up, the oldest beyond `keep` gone) and
    /// starts a new one; with compression, `FILE.1` becomes `FILE.1.gz` in the background.
    fn rotate(&mut self) -> std::io::Result<()> {
        if let Some(compressing) = self.compressing.take() {
            let _ = compressing.join();
        }
        let suffix = if self.compress { ".gz" } else { "" };
        let numbered = |n: usize, suffix: &str| {
            let mut name = self.path.clone().into_os_string();
            name.push(format!(".{n}{suffix}"));
            PathBuf::from(name)
        };
        if self.keep == 0 {
            ignore_missing(std::fs::remove_file(&self.path))?;
            return self.reopen_now();
        }
        ignore_missing(std::fs::remove_file(numbered(self.keep, suffix)))?;
        for n in (1..self.keep).rev() {
            ignore_missing(std::fs::rename(
                numbered(n, suffix),
                numbered(n + 1, suffix),
            ))?;
        }
        ignore_missing(std::fs::rename(&self.path, numbered(1, "")))?;
        let (plain, packed) = (numbered(1, ""), numbered(1, ".gz"));
        self.reopen_now()?;
        if self.compress {
            self.compressing = Some(std::thread::spawn(move || {
                if let Err(e) = gzip(&plain, &packed) {
                    // Kept uncompressed: nothing is lost.
                    eprintln!("cluster: cannot compress {}: {e}", plain.display());
                }
            }));
        }
        Ok(())
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

/// Writes `plain` gzipped to `packed` (through `packed.part`, so a half-written copy never
/// has the final name), then removes `plain`.
fn gzip(plain: &Path, packed: &Path) -> std::io::Result<()> {
    let mut part = packed.to_owned().into_os_string();
    part.push(".part");
    let part = PathBuf::from(part);
    ignore_missing(std::fs::remove_file(&part))?;
    let output = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&part)?;
    let mut encoder = flate2::write::GzEncoder::new(output, flate2::Compression::fast());
    std::io::copy(&mut File::open(plain)?, &mut encoder)?;
    encoder.finish()?.sync_all()?;
    std::fs::rename(&part, packed)?;
    std::fs::remove_file(plain)
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
        let mut log = LogFile::open(&path, Some(100), 2, false).unwrap();
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
    fn compressed_copies_hold_every_line_whole() {
        use std::io::Read;
        let dir = dir("compress");
        let path = dir.join("cluster.log");
        let mut log = LogFile::open(&path, Some(1000), 3, true).unwrap();
        for n in 0..200 {
            log.write_all(format!("line {n:04} of the log\n").as_bytes())
                .unwrap();
        }
        if let Some(compressing) = log.compressing.take() {
            compressing.join().unwrap();
        }
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        files.sort();
        assert_eq!(
            files,
            [
                "cluster.log",
                "cluster.log.1.gz",
                "cluster.log.2.gz",
                "cluster.log.3.gz"
            ]
        );
        let mut lines = Vec::new();
        for name in ["cluster.log.3.gz", "cluster.log.2.gz", "cluster.log.1.gz"] {
            let mut text = String::new();
            flate2::read::GzDecoder::new(File::open(dir.join(name)).unwrap())
                .read_to_string(&mut text)
                .unwrap();
            assert!(text.len() <= 1000 && text.ends_with('\n'), "{name}");
            lines.extend(text.lines().map(str::to_owned));
        }
        let text = std::fs::read_to_string(&path).unwrap();
        lines.extend(text.lines().map(str::to_owned));
        let expected: Vec<String> = (200 - lines.len()..200)
            .map(|n| format!("line {n:04} of the log"))
            .collect();
        assert_eq!(lines, expected, "the newest lines, in order, each once");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn copytruncate_and_reopen_are_followed() {
        let dir = dir("reopen");
        let path = dir.join("cluster.log");
        let mut log = LogFile::open(&path, Some(1000), 1, false).unwrap();
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
        assert!(LogFile::open(&path, None, 0, false).is_err());
        assert!(!dir.join("elsewhere").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
