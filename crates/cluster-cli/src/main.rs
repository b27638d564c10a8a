//! `cluster`: runs a program as a supervised cluster of worker processes.
//!
//! A thin shell around `cluster-watcher`: parses the command line into a validated
//! configuration ([`args`]), sets up logging that cannot stall supervision ([`logging`]),
//! writes the pid file ([`pid_file`]), maps signals to stop, rolling restart and scaling
//! ([`signals`]), runs the development loop of `--watch` ([`watch`]), and upgrades itself
//! without refusing a connection ([`upgrade`]).
//!
//! Exit status: 0 after a clean stop, 1 with a one-line reason on standard error, 2 for bad
//! arguments (clap's convention).

mod args;
mod check;
mod client;
mod config;
mod docs;
mod fds;
mod logfile;
mod logging;
mod orphans;
mod pid1;
mod pid_file;
mod reload;
mod run;
mod serve;
mod signals;
mod systemd;
mod table;
mod top;
mod upgrade;
mod watch;

use std::process::ExitCode;

use tracing::Instrument;

use crate::args::Args;
use crate::run::{Cluster, Exit};

fn main() -> ExitCode {
    upgrade::remember_binary();
    // Modes that need no running cluster, nor the watcher's start-up below.
    match std::env::args_os().nth(1).as_ref().and_then(|a| a.to_str()) {
        Some("check") => return check::main(std::env::args_os().skip(1).collect()),
        Some("completions" | "man") => return docs::main(std::env::args_os().skip(1).collect()),
        _ => {}
    }
    if std::env::args_os()
        .nth(1)
        .is_some_and(|first| client::is_client_command(&first))
    {
        return client::main();
    }
    // Socket activation's listeners first: marking every other inheritance close-on-exec
    // takes ownership of descriptor numbers.
    let activated = cluster_ipc::activated_sockets();
    // Started by an old watcher to take over from it (an upgrade): its two sockets.
    let predecessor = match cluster_watcher::PredecessorLink::inherited() {
        Ok(ends) => ends,
        Err(e) => return fail(&anyhow::Error::new(e).context("taking over from the old watcher")),
    };
    fds::close_inherited_on_exec();
    fds::raise_descriptor_limit();
    // A container's PID 1, or any process whose workers double-fork: orphans of the workers
    // come to us, are reaped and stopped with the cluster.
    let _ = rustix::process::set_child_subreaper(Some(rustix::process::getpid()));
    let loaded = Args::load_or_exit();
    // Declared before the runtime, so dropped after it: lines logged while the runtime shuts
    // down are still written.
    let logging = match logging::init(&loaded.args) {
        Ok(logging) => logging,
        Err(e) => return fail(&e),
    };
    // One thread is plenty for supervising, and it keeps the round-robin hand-off free of
    // cross-thread wake-ups on the path of every connection.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&anyhow::Error::new(e).context("cannot start the runtime")),
    };
    // Every line the cluster logs, its own and the watcher's tasks' (which run in the span
    // current when the watcher is created), carries the name.
    let span = tracing::info_span!("cluster", name = %loaded.args.name);
    let outcome = runtime.block_on(
        async {
            match run(loaded, &logging, activated, predecessor).await {
                Ok(Exit::StayAsInit { successor }) => Ok(pid1::stay_as_init(successor).await),
                Ok(Exit::Done) => Ok(ExitCode::SUCCESS),
                Err(e) => Err(e),
            }
        }
        .instrument(span),
    );
    drop(runtime);
    drop(logging);
    match outcome {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

/// Runs the cluster, mode by mode, until a stop or a hand-over to a new watcher; an error is
/// the reason for exit status 1.
async fn run(
    loaded: args::Loaded,
    logging: &logging::Logging,
    activated: Vec<cluster_ipc::ActivatedSocket>,
    predecessor: Option<cluster_watcher::SuccessorEnds>,
) -> anyhow::Result<Exit> {
    let Some(mut cluster) = run::prepare(loaded, activated, predecessor).await? else {
        return Ok(Exit::Done);
    };
    if !cluster.start(logging).await? {
        return Ok(Exit::Done);
    }
    if let Err(e) = cluster.take_over().await {
        cluster.watcher.stop().await;
        return Err(e);
    }
    let ending = Cluster::serve(&mut cluster, logging).await;
    cluster.end(ending).await
}

/// Prints `error` as one line on standard error; exit status 1.
fn fail(error: &anyhow::Error) -> ExitCode {
    eprintln!("cluster: {}", one_line(error));
    ExitCode::FAILURE
}

/// The error and its causes, `: `-separated, on one line. Unlike anyhow's `{:#}`, a cause is
/// left out when the message before it already contains its text: many errors (`thiserror`'s
/// `"...: {source}"`) print their source themselves, which `{:#}` would print a second time
/// ("Too many open files (os error 24): Too many open files (os error 24)").
pub(crate) fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    let mut previous = String::new();
    for cause in error.chain() {
        let text = cause.to_string().replace(['\n', '\r'], " ");
        if previous.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
        previous = text;
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wraps(std::io::Error);

    impl std::fmt::Display for Wraps {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot run ./server: {}", self.0)
        }
    }

    impl std::error::Error for Wraps {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_already_in_its_parents_text_is_not_repeated() {
        let error = anyhow::Error::new(Wraps(std::io::Error::from_raw_os_error(24)))
            .context("no cluster: a worker failed to start");
        let line = one_line(&error);
        assert_eq!(line.matches("Too many open files").count(), 1, "{line}");
        assert!(
            line.starts_with("no cluster: a worker failed to start: cannot run ./server: "),
            "{line}"
        );
    }

    #[test]
    fn causes_not_yet_said_are_kept_on_one_line() {
        let error = anyhow::Error::new(std::io::Error::from_raw_os_error(2))
            .context("cannot write pid file /x/y.pid\n(second line)");
        let line = one_line(&error);
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.starts_with("cannot write pid file /x/y.pid (second line): No such file"),
            "{line}"
        );
    }
}
