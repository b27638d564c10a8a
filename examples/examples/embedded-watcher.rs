//! The seed's programmatic `ClusterWatcher` example: a program that embeds the watcher,
//! starts 4 workers of a given program, prints every worker message and event, broadcasts a
//! message on SIGUSR2, and stops cleanly on SIGTERM or Ctrl-C.
//!
//! ```sh
//! cargo build --examples
//! cargo run --example embedded-watcher -- target/debug/examples/hello-http 127.0.0.1:0
//! kill -USR2 <pid>     # broadcast
//! ```
//!
//! Everything here comes from `cluster-watcher` alone: a user writing their own supervisor
//! needs nothing else.

use cluster_watcher::{ClusterWatcher, WatcherConfig};
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let mut args = std::env::args_os().skip(1);
    let program = args
        .next()
        .ok_or("usage: embedded-watcher PROGRAM [ARGS...]")?;
    let watcher = ClusterWatcher::new(WatcherConfig::new(program).args(args));

    let mut events = watcher.events();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            println!("event: {event:?}");
        }
    });
    let mut messages = watcher.messages().expect("first call");
    tokio::spawn(async move {
        while let Some(message) = messages.recv().await {
            match message.decode::<String>() {
                Ok(text) => println!("message from worker {}: {text}", message.id),
                Err(_) => println!(
                    "message from worker {}: {} bytes",
                    message.id,
                    message.payload.len()
                ),
            }
        }
    });

    watcher.start(4).await?;
    println!(
        "4 workers ready; pid {} (SIGUSR2 broadcasts, SIGTERM or Ctrl-C stops)",
        std::process::id()
    );
    let mut usr2 = signal(SignalKind::user_defined2())?;
    let mut term = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = usr2.recv() => {
                let delivered = watcher.broadcast(&"hello from the watcher".to_owned()).await?;
                println!("broadcast delivered to {delivered} workers");
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    for exit in watcher.stop().await {
        println!(
            "worker {} (pid {}) ended: {}",
            exit.id, exit.pid, exit.status
        );
    }
    Ok(())
}
