//! A chat whose WebSocket sessions survive restarts: each user's name and room move with
//! their session to the next generation, so a rolling restart, a scale-down or an upgrade
//! of `cluster` goes unnoticed by the people chatting.
//!
//! ```sh
//! cluster -w 2 target/release/examples/ws-chat 127.0.0.1:3000
//! websocat ws://127.0.0.1:3000/chat   # /name ada, /join lobby, then type
//! ```
//!
//! Rooms are per worker here (a hub in each process): with several workers, people in one
//! room talk across workers only through a shared bus of the application's (Redis, NATS),
//! or run the chat with `-w 1` and let `cluster` keep it up. Commands: `/name NAME`,
//! `/join ROOM`, `/who` (who am I, where, on which worker).

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use axum::Router;
use axum::routing::get;
use cluster_worker::ws::tungstenite::Message;
use cluster_worker::ws::{Session, Upgrade};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// What moves with a session.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Chatter {
    name: String,
    room: String,
}

/// This worker's rooms.
static ROOMS: LazyLock<Mutex<HashMap<String, broadcast::Sender<String>>>> =
    LazyLock::new(Mutex::default);

fn room(name: &str) -> broadcast::Sender<String> {
    let mut rooms = ROOMS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    rooms
        .entry(name.to_owned())
        .or_insert_with(|| broadcast::channel(256).0)
        .clone()
}

async fn chat(mut session: Session<Chatter>) {
    if session.state().room.is_empty() {
        *session.state_mut() = Chatter {
            name: "anonymous".into(),
            room: "lobby".into(),
        };
    }
    let mut heard = room(&session.state().room).subscribe();
    loop {
        tokio::select! {
            message = session.recv() => {
                let Some(Message::Text(text)) = message else {
                    match message {
                        Some(_) => continue,
                        None => return, // ended, or moving to the next generation
                    }
                };
                if let Some(reply) = command(&mut session, &mut heard, text.as_str()) {
                    if session.send(Message::text(reply)).await.is_err() {
                        return;
                    }
                    continue;
                }
                let line = format!("{}: {text}", session.state().name);
                let _ = room(&session.state().room).send(line);
            }
            line = heard.recv() => {
                let Ok(line) = line else { continue };
                if session.send(Message::text(line)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A `/command`'s answer (`None`: an ordinary line).
fn command(
    session: &mut Session<Chatter>,
    heard: &mut broadcast::Receiver<String>,
    text: &str,
) -> Option<String> {
    let (verb, argument) = text.split_once(' ').unwrap_or((text, ""));
    match verb {
        "/name" => {
            session.state_mut().name = argument.trim().to_owned();
            Some(format!("you are {}", session.state().name))
        }
        "/join" => {
            session.state_mut().room = argument.trim().to_owned();
            *heard = room(&session.state().room).subscribe();
            Some(format!("joined {}", session.state().room))
        }
        "/who" => Some(format!(
            "{} in {} on worker {} (pid {}){}",
            session.state().name,
            session.state().room,
            cluster_worker::id().map_or_else(|| "standalone".into(), |id| id.to_string()),
            std::process::id(),
            if session.resumed() {
                ", handed over"
            } else {
                ""
            }
        )),
        _ => None,
    }
}

async fn upgrade(upgrade: Upgrade) -> axum::response::Response {
    upgrade.on_upgrade(Chatter::default(), chat)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    cluster_worker::init_tracing();
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".to_owned());
    cluster_worker::ws::resume(chat);
    let app = Router::new().route("/chat", get(upgrade));
    let listener = cluster_worker::listen(&address).await?;
    tracing::info!("listening on {}", listener.local_addr());
    let why = cluster_worker::serve_axum(listener, app).await;
    tracing::info!(?why, "stopped");
    Ok(())
}
