//! A tonic gRPC service on the cluster's serve loop: a unary call and a server stream,
//! over HTTP/2 (h2c) on the same port as anything else the loop serves.
//!
//! ```sh
//! cluster -w 4 target/release/examples/grpc 127.0.0.1:50051
//! grpcurl -plaintext -import-path examples/proto -proto ticker.proto \
//!     -d '{"name":"you"}' 127.0.0.1:50051 ticker.Ticker/Hello
//! ```
//!
//! At a restart the serve loop gives each connection the two-phase GOAWAY: calls in flight
//! finish, new ones go to the next generation. A stream that would outlive the drain is
//! ended by the service itself at its turn ([`cluster_worker::drained`]) with
//! `UNAVAILABLE`, and a client resumes it on a new worker from the next tick it wants: no
//! tick lost, none repeated.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use cluster_examples::ticker::ticker_server::{Ticker, TickerServer};
use cluster_examples::ticker::{HelloReply, HelloRequest, Tick, TicksRequest};
use cluster_worker::DrainNotice;
use futures_util::Stream;
use tonic::{Request, Response, Status};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    cluster_worker::init_tracing();
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50051".to_owned());
    let routes = tonic::service::Routes::new(TickerServer::new(Service)).prepare();
    let listener = cluster_worker::listen(&address).await?;
    tracing::info!("listening on {}", listener.local_addr());
    let why = cluster_worker::serve_axum(listener, routes.into_axum_router()).await;
    tracing::info!(?why, "stopped");
    Ok(())
}

struct Service;

type TickStream = Pin<Box<dyn Stream<Item = Result<Tick, Status>> + Send>>;

/// Where a stream of ticks is.
struct Ticking {
    next: u64,
    end: u64,
    every: Duration,
    /// This stream's turn of the worker's drain.
    turn: Pin<Box<dyn Future<Output = DrainNotice> + Send>>,
    ended: bool,
}

#[tonic::async_trait]
impl Ticker for Service {
    async fn hello(&self, request: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        Ok(Response::new(HelloReply {
            message: format!("Hello, {}", request.into_inner().name),
            pid: std::process::id(),
        }))
    }

    type TicksStream = TickStream;

    async fn ticks(&self, request: Request<TicksRequest>) -> Result<Response<TickStream>, Status> {
        let request = request.into_inner();
        let start = Ticking {
            next: request.from,
            end: request.from.saturating_add(request.count),
            every: Duration::from_millis(request.every_ms.clamp(1, 60_000)),
            turn: Box::pin(cluster_worker::drained()),
            ended: false,
        };
        let ticks = futures_util::stream::unfold(start, |mut at| async move {
            if at.ended || at.next >= at.end {
                return None;
            }
            tokio::select! {
                _ = &mut at.turn => {
                    at.ended = true;
                    let goodbye = Status::unavailable(format!(
                        "the worker is restarting: resume from tick {}",
                        at.next
                    ));
                    Some((Err(goodbye), at))
                }
                () = tokio::time::sleep(at.every) => {
                    let tick = Tick { n: at.next, pid: std::process::id() };
                    at.next += 1;
                    Some((Ok(tick), at))
                }
            }
        });
        Ok(Response::new(Box::pin(ticks)))
    }
}
