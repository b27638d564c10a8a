//! WebSocket sessions that survive restarts: an echo whose sessions move to the next
//! generation, with their state, when a worker stops (a rolling restart, a scale-down, a
//! recycling, an upgrade of `cluster` itself). The client sees no close and loses nothing.
//!
//! ```sh
//! cluster -w 4 target/release/examples/ws-echo 127.0.0.1:3000
//! websocat ws://127.0.0.1:3000/ws    # then: kill -USR1 <cluster's pid>, and type on
//! ```
//!
//! Each text message is answered with itself, then the number of messages the session has
//! received so far and the pid of the worker that answered (`7 8 12345`): the count is the
//! session's state, and goes on counting across workers. Binary messages come back as they
//! are (a 1 MiB one whole, whatever happens meanwhile).

use axum::Router;
use axum::routing::get;
use cluster_worker::ws::tungstenite::Message;
use cluster_worker::ws::{Session, Upgrade};

/// The session's state: messages received so far (it moves with the session).
type Received = u64;

async fn echo(mut session: Session<Received>) {
    while let Some(message) = session.recv().await {
        *session.state_mut() += 1;
        let answer = match message {
            Message::Text(text) => {
                let received = session.state();
                Message::text(format!("{text} {received} {}", std::process::id()))
            }
            binary @ Message::Binary(_) => binary,
            _ => continue,
        };
        if session.send(answer).await.is_err() {
            return;
        }
    }
}

async fn upgrade(upgrade: Upgrade) -> axum::response::Response {
    // WS_ECHO_DEFLATE=1: take permessage-deflate when offered (such sessions cannot move).
    match std::env::var_os("WS_ECHO_DEFLATE").is_some() {
        true => upgrade.deflate().on_upgrade(0, echo),
        false => upgrade.on_upgrade(0, echo),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    cluster_worker::init_tracing();
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".to_owned());
    // Sessions handed over by the previous generation run the same function. (For trying
    // the fallback: with WS_ECHO_RESUME_UP_TO_GENERATION=N, workers started more than N times
    // resume nothing, and the sessions handed to them are closed with 1012.)
    let refuse_after = std::env::var("WS_ECHO_RESUME_UP_TO_GENERATION")
        .ok()
        .and_then(|n| n.parse::<u32>().ok());
    let generation = cluster_worker::generation().unwrap_or(1);
    if refuse_after.is_none_or(|last| generation <= last) {
        cluster_worker::ws::resume(echo);
    }
    let app = Router::new().route("/ws", get(upgrade));
    let listener = cluster_worker::listen(&address).await?;
    tracing::info!("listening on {}", listener.local_addr());
    let why = cluster_worker::serve_axum(listener, app).await;
    tracing::info!(?why, "stopped");
    Ok(())
}
