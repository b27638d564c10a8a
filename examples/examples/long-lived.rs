//! Long-lived connections on the cluster's serve loop: a WebSocket echo, a server-sent event
//! stream, and HTTP/2 (h2c) on the same port as HTTP/1.1. At a restart each says goodbye
//! properly: the WebSocket closes with 1012 ("service restart"), the event stream ends with
//! a clean terminator, HTTP/2 gets a GOAWAY; with `--drain-spread` the goodbyes are spread
//! over a window so clients do not all reconnect at once.
//!
//! ```sh
//! cluster -w 4 --drain-spread 10s target/release/examples/long-lived 127.0.0.1:3000
//! curl --http2-prior-knowledge http://127.0.0.1:3000/   # HTTP/2
//! curl -N http://127.0.0.1:3000/events                  # an event every 100 ms
//! websocat ws://127.0.0.1:3000/ws                       # echo
//! ```
//!
//! Routes: `/` says which worker answered; `/ws` echoes text and binary messages; `/events`
//! sends `data: N` every 100 ms (`?every=MS` to change it).

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::Query;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::response::IntoResponse;
use axum::response::sse::{Event, Sse};
use axum::routing::get;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    cluster_worker::init_tracing();
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".to_owned());
    let app = Router::new()
        .route("/", get(hello))
        .route("/ws", get(echo))
        .route("/events", get(events));
    let listener = cluster_worker::listen(&address).await?;
    tracing::info!("listening on {}", listener.local_addr());
    let why = cluster_worker::serve_axum(listener, app).await;
    tracing::info!(?why, "stopped");
    Ok(())
}

async fn hello() -> impl IntoResponse {
    let worker = cluster_worker::id().map_or_else(|| "standalone".to_owned(), |id| id.to_string());
    (
        [
            ("x-cluster-worker", worker.clone()),
            ("x-cluster-pid", std::process::id().to_string()),
        ],
        format!("Hello from worker {worker}\n"),
    )
}

/// Echoes every text and binary message; closes with 1012 at the drain.
async fn echo(upgrade: WebSocketUpgrade) -> impl IntoResponse {
    upgrade.on_upgrade(|socket| async move {
        let mut socket = cluster_worker::ws::Draining::new(socket);
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Text(_) | Message::Binary(_))
                && socket.send(message).await.is_err()
            {
                return;
            }
        }
    })
}

/// `data: 0`, `data: 1`, … every `every` ms, until the client goes or the worker drains.
async fn events(Query(query): Query<HashMap<String, u64>>) -> impl IntoResponse {
    let every = Duration::from_millis(query.get("every").copied().unwrap_or(100).max(1));
    let ticks = futures_util::stream::unfold(0u64, move |n| async move {
        tokio::time::sleep(every).await;
        Some((
            Ok::<_, Infallible>(Event::default().data(n.to_string())),
            n + 1,
        ))
    });
    Sse::new(ticks)
}
