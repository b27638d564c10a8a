//! `--watch`: the development loop that never takes the server down.
//!
//! A change under a watched path (files or directories, recursively) waits until the edits
//! settle (no further change for the debounce time), runs `--build` if given, and on success
//! does a rolling restart: the new workers replace the old ones only once they are ready, so
//! the port never refuses a connection, and a build that fails or a program that no longer
//! starts leaves the old workers serving, with the reason in the log. Changes that arrive
//! during a build or a restart make one more round once it is done, however many there were.
//!
//! With `--build`, the first build runs before the workers first start (on a fresh checkout
//! the program may not exist yet); if it fails, `cluster` exits.
//!
//! Ignored, as a developer expects: version-control directories, the build's output
//! (`target/`), editor swap and backup files, and what the `.gitignore` files of the watched
//! paths (and of the directories above them, up to the repository's root) exclude.
//!
//! The file-system watcher (notify, inotify here) calls back on a thread of its own; the
//! callback only filters the path and raises a flag, so a storm of events holds no memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use cluster_watcher::ClusterWatcher;
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use notify::Watcher;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// What `--watch` was given.
#[derive(Debug, Clone)]
pub(crate) struct WatchOptions {
    /// Files or directories to watch (recursively).
    pub(crate) paths: Vec<PathBuf>,
    /// Run through `/bin/sh -c` before each restart; a failure keeps the old workers.
    pub(crate) build: Option<String>,
    /// A build still running after this long is killed and counts as failed.
    pub(crate) build_timeout: Duration,
    /// How long the tree must stay quiet before a round starts.
    pub(crate) debounce: Duration,
}

/// After this long of uninterrupted changes, a round starts anyway.
const MAX_SETTLE: Duration = Duration::from_secs(10);

/// Directory names never watched: version control, build output, dependencies.
const IGNORED_DIRS: [&str; 7] = [
    ".git",
    ".hg",
    ".svn",
    ".jj",
    "target",
    "node_modules",
    "__pycache__",
];

/// File names editors write while saving, and their backups.
fn is_editor_file(name: &str) -> bool {
    name.ends_with(".swp")
        || name.ends_with(".swo")
        || name.ends_with(".swx")
        || name.ends_with('~')
        || name.ends_with(".tmp")
        || name.ends_with(".kate-swp")
        || name.ends_with(".bak")
        || name.starts_with(".#")
        || (name.starts_with('#') && name.ends_with('#'))
        || name == "4913" // vim's probe that a directory is writable
        || name == ".DS_Store"
}

/// Which changed paths start a round.
#[derive(Debug)]
pub(crate) struct Filter {
    gitignores: Vec<Gitignore>,
}

impl Filter {
    /// The rules for `roots`: built-in ones, and the `.gitignore` files of each root and of
    /// the directories above it up to the repository's root (the one holding `.git`).
    pub(crate) fn new(roots: &[PathBuf]) -> Self {
        let mut gitignores = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for root in roots {
            let dir = if root.is_dir() {
                root.clone()
            } else {
                root.parent().map(Path::to_path_buf).unwrap_or_default()
            };
            let mut current = Some(dir.as_path());
            while let Some(dir) = current {
                let file = dir.join(".gitignore");
                if file.is_file() && seen.insert(file.clone()) {
                    let mut builder = GitignoreBuilder::new(dir);
                    if let Some(error) = builder.add(&file) {
                        tracing::warn!(file = %file.display(), %error, "part of a .gitignore was not understood");
                    }
                    match builder.build() {
                        Ok(rules) => gitignores.push(rules),
                        Err(error) => {
                            tracing::warn!(file = %file.display(), %error, "a .gitignore was not understood")
                        }
                    }
                }
                if dir.join(".git").exists() {
                    break;
                }
                current = dir.parent();
            }
        }
        Self { gitignores }
    }

    /// Whether a change of `path` should start a round.
    pub(crate) fn wants(&self, path: &Path) -> bool {
        let ignored_dir = path.components().any(|c| {
            c.as_os_str()
                .to_str()
                .is_some_and(|name| IGNORED_DIRS.contains(&name))
        });
        if ignored_dir {
            return false;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if is_editor_file(name) {
            return false;
        }
        let is_dir = path.is_dir();
        !self.gitignores.iter().any(|rules| {
            path.starts_with(rules.path())
                && rules.matched_path_or_any_parents(path, is_dir).is_ignore()
        })
    }
}

/// Changes seen by the file-system watcher's thread, for the loop to pick up.
#[derive(Debug, Default)]
struct Changes {
    /// Counts relevant changes; the loop compares it before and after waiting.
    count: AtomicU64,
    /// The first changed path since the loop last looked (for the log).
    first: Mutex<Option<PathBuf>>,
    woken: Notify,
}

/// Watches `options.paths` and rebuilds and restarts `watcher` on each settled change, for
/// as long as the cluster runs (never returns on its own).
///
/// # Errors
/// A path that cannot be watched (it does not exist, say).
pub(crate) async fn run(options: WatchOptions, watcher: &ClusterWatcher) -> anyhow::Result<()> {
    let changes = Arc::new(Changes::default());
    let filter = Filter::new(&options.paths);
    let seen = changes.clone();
    let mut fs_watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if matches!(event.kind, notify::EventKind::Access(_)) {
                return;
            }
            let Some(path) = event.paths.iter().find(|p| filter.wants(p)) else {
                return;
            };
            seen.first.lock().get_or_insert_with(|| path.clone());
            seen.count.fetch_add(1, Ordering::SeqCst);
            seen.woken.notify_one();
        })
        .context("cannot watch files")?;
    for path in &options.paths {
        fs_watcher
            .watch(path, notify::RecursiveMode::Recursive)
            .with_context(|| format!("cannot watch {}", path.display()))?;
    }
    tracing::info!(paths = ?options.paths, build = options.build.as_deref().unwrap_or("-"), "watching for changes");
    let mut roots = Roots::new(&options.paths);
    let mut look = tokio::time::interval(ROOT_CHECK);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = changes.woken.notified() => {}
            _ = look.tick() => {
                // A watched path deleted and made again (a `git checkout`, a rebuilt
                // directory) is a new inode that inotify does not follow: watch it anew.
                if !roots.renew(&mut fs_watcher) {
                    continue;
                }
            }
        }
        settle(&changes, options.debounce).await;
        let count = changes.count.load(Ordering::SeqCst);
        let first = changes.first.lock().take();
        let path = first
            .as_deref()
            .map_or_else(String::new, |p| p.display().to_string());
        tracing::info!(path, "change detected");
        if let Some(build) = &options.build {
            match run_build(build, options.build_timeout).await {
                Ok(elapsed) => {
                    tracing::info!(
                        seconds = elapsed.as_secs_f64(),
                        "build succeeded; rolling restart"
                    );
                }
                Err(why) => {
                    tracing::error!("build failed ({why}); the running workers keep serving");
                    continue;
                }
            }
        }
        match watcher.restart().await {
            Ok(()) => tracing::info!("rolling restart complete: every worker runs the new code"),
            Err(e) => tracing::error!(
                error = %e,
                "the new workers did not start; the old ones keep serving"
            ),
        }
        // Changes made during the build or the restart: the notified permit is set, so the
        // loop goes round once more.
        if changes.count.load(Ordering::SeqCst) == count {
            // Nothing new: drop a permit left by changes already covered by this round.
            let _ = tokio::time::timeout(Duration::ZERO, changes.woken.notified()).await;
        }
    }
}

/// How often the watched paths themselves are looked at (deleted, made again).
const ROOT_CHECK: Duration = Duration::from_secs(1);

/// The watched paths, and the inode each had when last watched (`None`: missing).
struct Roots(Vec<(PathBuf, Option<u64>)>);

impl Roots {
    fn new(paths: &[PathBuf]) -> Self {
        Self(paths.iter().map(|p| (p.clone(), inode(p))).collect())
    }

    /// Watches again every path made anew since the last look; whether one was (a round
    /// is due: its contents are new). A path that went away is said once.
    fn renew(&mut self, watcher: &mut impl Watcher) -> bool {
        let mut renewed = false;
        for (path, known) in &mut self.0 {
            let now = inode(path);
            if now == *known {
                continue;
            }
            match now {
                None => {
                    tracing::warn!(path = %path.display(), "a watched path is gone; watching for it to come back")
                }
                Some(_) => match watcher.watch(path, notify::RecursiveMode::Recursive) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "a watched path was made again; watching it anew");
                        renewed = true;
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot watch a path made again");
                        continue;
                    }
                },
            }
            *known = now;
        }
        renewed
    }
}

fn inode(path: &Path) -> Option<u64> {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).ok()?).into()
}

/// Waits until no change came for `debounce` (at most [`MAX_SETTLE`]).
async fn settle(changes: &Changes, debounce: Duration) {
    let started = Instant::now();
    loop {
        let before = changes.count.load(Ordering::SeqCst);
        tokio::time::sleep(debounce).await;
        if changes.count.load(Ordering::SeqCst) == before || started.elapsed() >= MAX_SETTLE {
            return;
        }
    }
}

/// Runs the build command, its output in the log tagged `build`; how long it took, or why
/// it failed. A build still running after `timeout` is killed (with what it started).
pub(crate) async fn run_build(command: &str, timeout: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    tracing::info!(command, "building");
    let mut child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // A group of its own: the build and whatever it starts are killed together if the
        // cluster stops meanwhile.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run /bin/sh: {e}"))?;
    let group = BuildGroup(child.id());
    let out = log_build_output(child.stdout.take(), "stdout");
    let err = log_build_output(child.stderr.take(), "stderr");
    let finished =
        tokio::time::timeout(timeout, async { tokio::join!(out, err, child.wait()).2 }).await;
    drop(group);
    let Ok(status) = finished else {
        return Err(format!("still running after {timeout:?}; killed"));
    };
    let status = status.map_err(|e| format!("cannot wait for the build: {e}"))?;
    if status.success() {
        Ok(started.elapsed())
    } else {
        Err(format!("{status}"))
    }
}

/// Re-emits each line of one of the build's output streams, tagged `build`.
async fn log_build_output(stream: Option<impl tokio::io::AsyncRead + Unpin>, name: &'static str) {
    if let Some(stream) = stream {
        cluster_watcher::read_lines(stream, |line| {
            tracing::info!(target: "build", stream = name, "{line}");
        })
        .await;
    }
}

/// Kills the build's process group when dropped (the build finished: nothing is left; the
/// cluster stopped mid-build: what it started goes too).
struct BuildGroup(Option<u32>);

impl Drop for BuildGroup {
    fn drop(&mut self) {
        if let Some(pid) = self
            .0
            .and_then(|pid| rustix::process::Pid::from_raw(pid as i32))
        {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_output_editor_files_and_gitignored_paths_are_ignored() {
        let dir = std::env::temp_dir().join(format!("cluster-watch-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::create_dir_all(dir.join(".git")).unwrap();
        std::fs::write(dir.join(".gitignore"), "*.log\n/generated/\n").unwrap();
        let filter = Filter::new(&[dir.join("src")]);
        assert!(filter.wants(&dir.join("src/main.rs")));
        assert!(!filter.wants(&dir.join("src/.main.rs.swp")));
        assert!(!filter.wants(&dir.join("src/main.rs~")));
        assert!(!filter.wants(&dir.join("src/4913")));
        assert!(!filter.wants(&dir.join("src/.#main.rs")));
        assert!(!filter.wants(&dir.join("target/debug/app")));
        assert!(!filter.wants(&dir.join(".git/index")));
        assert!(!filter.wants(&dir.join("src/server.log")));
        assert!(!filter.wants(&dir.join("generated/x.rs")));
        assert!(filter.wants(&dir.join("src/generated.rs")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
