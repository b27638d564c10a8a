//! [`ServerProcess`]: a server under test, and [`workspace_bin`] to find it.

use std::ffi::OsStr;
use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

use crate::{children_of, http_ok};

/// A program built by this workspace (a binary, an example, a test helper), found beside the
/// running executable: `target/<profile>/` for binaries, `target/<profile>/deps/` for tests.
///
/// # Panics
/// When it is not built.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dirs = exe.ancestors().skip(1).take(2);
    for dir in dirs {
        for candidate in [dir.join(name), dir.join("examples").join(name)] {
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "{name} is not built beside {}: run `cargo build --workspace --all-targets`",
        exe.display()
    );
}

/// What becomes of a [`ServerProcess`]'s output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Collected line by line ([`ServerProcess::output`]).
    Collect,
    /// Thrown away.
    Discard,
    /// Standard output left in `child.stdout`; standard error thrown away.
    Piped,
}

fn with_port(command: &[String], port: u16) -> Vec<String> {
    command
        .iter()
        .map(|a| a.replace("{port}", &port.to_string()))
        .collect()
}

/// A server process in a process group of its own, with its standard output and error
/// collected line by line (or discarded). Dropping it stops it: `SIGTERM` to its group,
/// then, after 5 s, `SIGKILL` to the group and to its children (a cluster's workers live in
/// groups of their own).
#[derive(Debug)]
pub struct ServerProcess {
    /// The process.
    pub child: Child,
    output: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl ServerProcess {
    /// Starts the workspace's `cluster` binary with `args`, its output collected.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// [`start`](Self::start) with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Self::spawn(workspace_bin("cluster"), args, &env, Output::Collect)
    }

    /// Starts `command` (its first element is the program) with every `{port}` in it
    /// replaced by `port`, its output discarded: the benchmarks' servers.
    pub fn command(command: &[String], env: &[(String, String)], port: u16) -> Self {
        let args = with_port(command, port);
        Self::spawn(&args[0], &args[1..], env, Output::Discard)
    }

    /// [`command`](Self::command) with its standard output left in `child.stdout` for the
    /// caller to read (when each line arrived matters).
    pub fn command_with_stdout(command: &[String], env: &[(String, String)], port: u16) -> Self {
        let args = with_port(command, port);
        Self::spawn(&args[0], &args[1..], env, Output::Piped)
    }

    /// Starts `program` with `args` and `env`, in a process group of its own.
    pub fn spawn<P: AsRef<OsStr>, A: AsRef<OsStr>>(
        program: P,
        args: &[A],
        env: &[(String, String)],
        output: Output,
    ) -> Self {
        let (stdout, stderr) = match output {
            Output::Collect => (Stdio::piped(), Stdio::piped()),
            Output::Discard => (Stdio::null(), Stdio::null()),
            Output::Piped => (Stdio::piped(), Stdio::null()),
        };
        let mut child = Command::new(program.as_ref())
            .args(args)
            .envs(env.iter().cloned())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", program.as_ref()));
        if output == Output::Piped {
            return Self {
                child,
                output: Arc::default(),
                readers: Vec::new(),
            };
        }
        let output = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        let streams = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ];
        for stream in streams.into_iter().flatten() {
            let output = output.clone();
            readers.push(std::thread::spawn(move || {
                for line in std::io::BufReader::new(stream)
                    .lines()
                    .map_while(Result::ok)
                {
                    let mut out = output.lock().unwrap_or_else(|e| e.into_inner());
                    out.push_str(&line);
                    out.push('\n');
                }
            }));
        }
        Self {
            child,
            output,
            readers,
        }
    }

    /// The process (and group) id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until a line contains `needle`; returns that line.
    ///
    /// # Panics
    /// When none does within `limit` (the message holds the output).
    pub fn wait_for(&self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(line) = self.output().lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no line with {needle:?} within {limit:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How many lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.output().lines().filter(|l| l.contains(needle)).count()
    }

    /// The port from the first `listening on 127.0.0.1:PORT` line.
    pub fn port(&self) -> u16 {
        let line = self.wait_for("listening on 127.0.0.1:", Duration::from_secs(20));
        let tail = line
            .split("listening on 127.0.0.1:")
            .nth(1)
            .unwrap_or_default();
        tail.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .expect("a port number")
    }

    /// Waits until 127.0.0.1:`port` answers `GET /` (at most 20 s); returns how long it took.
    pub fn wait_ready(&self, port: u16) -> Duration {
        let started = Instant::now();
        while !http_ok(port) {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "server on {port} never answered"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        started.elapsed()
    }

    /// The pids of this process's children (a cluster's workers).
    pub fn worker_pids(&self) -> Vec<u32> {
        children_of(self.pid())
    }

    /// Sends a signal to this process only.
    pub fn signal(&self, signal: Signal) {
        crate::signal(self.pid(), signal);
    }

    /// Waits for exit, at most `limit`, then (at most 2 s more) for the last of its output.
    ///
    /// # Panics
    /// When it has not exited by then (it is killed first).
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                self.kill_all();
                panic!("process {} did not exit within {limit:?}", self.pid());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        status
    }

    fn kill_all(&mut self) {
        let children = self.worker_pids();
        if let Some(group) = Pid::from_raw(self.pid() as i32) {
            let _ = rustix::process::kill_process_group(group, Signal::KILL);
        }
        for pid in children {
            crate::signal(pid, Signal::KILL);
        }
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        if let Some(group) = Pid::from_raw(self.pid() as i32) {
            let _ = rustix::process::kill_process_group(group, Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill_all();
    }
}
