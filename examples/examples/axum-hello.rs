//! An axum `Router` served on the cluster's listener: clustering an axum service is the one
//! line that builds the listener.
//!
//! ```sh
//! cargo run --example axum-hello 127.0.0.1:3000
//! cluster -w 4 --balance round-robin target/release/examples/axum-hello 127.0.0.1:3000
//! curl http://127.0.0.1:3000/worker
//! ```
//!
//! Routes: `/` answers `Hello, World!`, `/worker` the worker id, `/peer` the client address
//! (through `ConnectInfo`, which is the real peer in both balance modes).

use std::net::SocketAddr;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    cluster_worker::init_tracing();
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".to_owned());
    let app = Router::new()
        .route("/", get(|| async { "Hello, World!" }))
        .route(
            "/worker",
            get(|| async {
                cluster_worker::id().map_or_else(|| "standalone".to_owned(), |id| id.to_string())
            }),
        )
        .route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        );

    // The one cluster-specific line: where the listener comes from.
    let listener = cluster_worker::listen(&address).await?;
    tracing::info!("listening on {}", listener.local_addr());

    // Like `axum::serve`, and at a restart idle keep-alive connections move to the next
    // generation instead of being closed. `ConnectInfo<SocketAddr>` works as with axum's.
    let why = cluster_worker::serve_axum(listener, app).await;
    tracing::info!(?why, "stopped");
    Ok(())
}
