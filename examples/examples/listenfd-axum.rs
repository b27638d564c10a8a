//! An axum server that knows nothing of `cluster`: it takes its listener from socket
//! activation through the `listenfd` crate (as axum's own auto-reload example does), and
//! stops gracefully on SIGTERM. It runs unmodified under `systemd-socket-activate`,
//! `systemfd` and `cluster --listen`.
//!
//! ```sh
//! cluster -w 2 --listen 127.0.0.1:3000 target/release/examples/listenfd-axum
//! systemd-socket-activate -l 127.0.0.1:3000 target/release/examples/listenfd-axum
//! ```

use axum::Router;
use axum::routing::get;
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut fds = listenfd::ListenFd::from_env();
    let listener = match fds.take_tcp_listener(0)? {
        Some(inherited) => {
            inherited.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(inherited)?
        }
        None => {
            let address = std::env::args()
                .nth(1)
                .unwrap_or_else(|| "127.0.0.1:3000".to_owned());
            tokio::net::TcpListener::bind(address).await?
        }
    };
    eprintln!("listening on {}", listener.local_addr()?);
    let app = Router::new().route("/", get(|| async { format!("pid {}", std::process::id()) }));
    let mut terminate = signal(SignalKind::terminate())?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            terminate.recv().await;
        })
        .await?;
    Ok(())
}
