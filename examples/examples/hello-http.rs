//! The seed's simple HTTP server: answers every request with `Hello, World!` and a header
//! `x-cluster-worker: <worker id>`. Runs standalone or under `cluster` unchanged.
//!
//! ```sh
//! cargo run --example hello-http                      # standalone on 127.0.0.1:1337
//! cluster -w 4 target/release/examples/hello-http 127.0.0.1:1337
//! ```
//!
//! In a cluster each worker is one process with a single-threaded runtime (the cluster
//! supplies the parallelism); standalone it uses a multi-threaded runtime. On termination it
//! stops accepting and finishes the requests in flight.

use std::convert::Infallible;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = if cluster_worker::is_worker() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
    };
    runtime.block_on(serve())
}

async fn serve() -> Result<(), Box<dyn std::error::Error>> {
    cluster_worker::init_tracing();
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:1337".to_owned());
    let listener = cluster_worker::listen(&address).await?;
    tracing::info!("listening on {}", listener.local_addr());

    let worker = cluster_worker::id().map_or_else(|| "standalone".to_owned(), |id| id.to_string());
    let worker = hyper::header::HeaderValue::from_str(&worker)?;
    let graceful = GracefulShutdown::new();
    let http = hyper::server::conn::http1::Builder::new();
    let why = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted?;
                let worker = worker.clone();
                let service = hyper::service::service_fn(move |_: Request<Incoming>| {
                    let mut response = Response::new(Full::new(Bytes::from_static(b"Hello, World!")));
                    response.headers_mut().insert("x-cluster-worker", worker.clone());
                    async move { Ok::<_, Infallible>(response) }
                });
                let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            why = cluster_worker::await_termination() => break why,
        }
    };
    tracing::info!(?why, "stopping: finishing requests in flight");
    drop(listener);
    if graceful.count() > 0 {
        // hyper closes a connection that has not sent its first request yet at once; one
        // accepted a moment ago usually has its request still on the way, so let it arrive.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    graceful.shutdown().await;
    Ok(())
}
