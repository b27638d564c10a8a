//! The seed's simple HTTP server: answers every request with `Hello, World!` and headers
//! `x-cluster-worker: <worker id>` and `x-cluster-pid: <pid>` (and `x-app-version:` the
//! value of `APP_VERSION` when it is set, to see a reload reach every worker); `/sleep?ms=N` answers after N
//! milliseconds; `/busy?ms=N` blocks its thread for N milliseconds first (a request that
//! keeps the worker busy, as heavy computation would). Runs standalone or under `cluster`
//! unchanged. It counts its requests in `hello_requests_total`, an application metric the
//! cluster's `/metrics` shows per worker and merged (`worker="all"`, never reset).
//!
//! ```sh
//! cargo run --example hello-http                      # standalone on 127.0.0.1:1337
//! cluster -w 4 target/release/examples/hello-http 127.0.0.1:1337
//! ```
//!
//! In a cluster each worker is one process with a single-threaded runtime (the cluster
//! supplies the parallelism); standalone it uses a multi-threaded runtime. On termination it
//! stops accepting, finishes the requests in flight and, in a cluster, hands its idle
//! keep-alive connections to the next generation (`cluster_worker::serve_http`).

use std::convert::Infallible;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};

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
    let pid = hyper::header::HeaderValue::from(std::process::id());
    let requests = prometheus_client::metrics::counter::Counter::<u64>::default();
    cluster_worker::metrics::registry().register(
        "hello_requests",
        "Requests answered",
        requests.clone(),
    );
    let version = std::env::var("APP_VERSION")
        .ok()
        .and_then(|v| hyper::header::HeaderValue::from_str(&v).ok());
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        requests.inc();
        let mut response = Response::new(Full::new(Bytes::from_static(b"Hello, World!")));
        let headers = response.headers_mut();
        headers.insert("x-cluster-worker", worker.clone());
        headers.insert("x-cluster-pid", pid.clone());
        if let Some(version) = &version {
            headers.insert("x-app-version", version.clone());
        }
        // `/sleep?ms=N` answers after N milliseconds (at most 60 s): a slow request;
        // `/busy?ms=N` blocks the thread that long: a request that occupies the worker.
        let millis = || {
            request
                .uri()
                .query()?
                .strip_prefix("ms=")?
                .parse::<u64>()
                .ok()
                .map(|ms| std::time::Duration::from_millis(ms.min(60_000)))
        };
        let (delay, busy) = match request.uri().path() {
            "/sleep" => (millis(), None),
            "/busy" => (None, millis()),
            _ => (None, None),
        };
        async move {
            if let Some(busy) = busy {
                std::thread::sleep(busy);
            }
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            Ok::<_, Infallible>(response)
        }
    });
    let failing = fail_after();
    // Serves until told to stop; then finishes the requests in flight and hands idle
    // keep-alive connections to the next generation (closes them when standalone).
    let why = cluster_worker::serve_http(listener, service).await;
    tracing::info!(?why, "stopped");
    if failing {
        std::process::exit(1);
    }
    Ok(())
}

/// For trying reloads that go wrong: with `HELLO_FAIL_AFTER_MS=N`, the worker gives up N
/// milliseconds after it started serving (it asks to be stopped, finishes its requests,
/// hands its idle connections on, and exits with status 1, as a program would whose
/// dependency went away); with `HELLO_CRASH_AFTER_MS=N` it exits with status 1 at once,
/// whatever it was doing. Whether it is failing.
fn fail_after() -> bool {
    let after = |name: &str| {
        std::env::var(name)
            .ok()?
            .parse::<u64>()
            .ok()
            .map(std::time::Duration::from_millis)
    };
    if let Some(delay) = after("HELLO_CRASH_AFTER_MS") {
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            std::process::exit(1);
        });
    }
    let Some(delay) = after("HELLO_FAIL_AFTER_MS") else {
        return false;
    };
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        tracing::error!("giving up (HELLO_FAIL_AFTER_MS)");
        let _ = cluster_worker::shutdown().await;
    });
    true
}
