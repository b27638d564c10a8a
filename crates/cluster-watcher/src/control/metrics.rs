//! `--metrics ADDR`: Prometheus text at `/metrics`, and the probes Kubernetes and load
//! balancers want: `/healthz` (the supervision loop answers) and `/readyz` (enough workers
//! are ready). Served with hyper on a socket of its own; each scrape takes one status
//! snapshot, so counters come from the watcher and survive worker restarts.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::exposition::exposition;
use super::remote::Remote;
use crate::task::spawn_in;

/// When `/readyz` answers 200.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Readiness {
    /// At least one worker is ready (the default).
    #[default]
    Any,
    /// Every wanted worker is ready.
    All,
}

/// A running metrics endpoint; dropping it stops serving.
#[derive(Debug)]
pub struct MetricsServer {
    address: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// The address it serves on (the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Scrapes and probes served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 32;

/// How long one connection may take (keep-alive included): a scraper that keeps its
/// connection idle holds a descriptor of the watcher's for no longer than this.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) async fn serve(
    remote: Remote,
    address: SocketAddr,
    readiness: Readiness,
) -> std::io::Result<MetricsServer> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let address = listener.local_addr()?;
    let span = remote.span();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let task = spawn_in(span.clone(), async move {
        loop {
            // Room first, then accept: past the cap, connections wait in the kernel's backlog
            // and cost the watcher no descriptor.
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let remote = remote.clone();
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let remote = remote.clone();
                async move {
                    Ok::<_, Infallible>(answer(&remote, request.uri().path(), readiness).await)
                }
            });
            spawn_in(span.clone(), async move {
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
                drop(permit);
            });
        }
    });
    Ok(MetricsServer { address, task })
}

async fn answer(remote: &Remote, path: &str, readiness: Readiness) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
    };
    // Every probe needs the supervision loop to answer; one that does not is not healthy.
    // Only a scrape measures each worker's memory and CPU (a pass over /proc).
    let measure = path == "/metrics";
    let status = tokio::time::timeout(Duration::from_secs(1), remote.status(measure)).await;
    match (path, status) {
        ("/healthz", Ok(_)) => text(StatusCode::OK, "ok\n".into()),
        ("/healthz" | "/readyz" | "/metrics", Err(_)) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the supervision loop does not answer\n".into(),
        ),
        ("/readyz", Ok(status)) => {
            let ready = status.ready_workers();
            let enough = match readiness {
                Readiness::Any => ready > 0,
                Readiness::All => ready >= status.wanted_workers() && ready > 0,
            };
            let enough = enough && status.running && !remote.draining();
            let body = format!("{ready}/{} workers ready\n", status.wanted_workers());
            if enough {
                text(StatusCode::OK, body)
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, body)
            }
        }
        ("/metrics", Ok(status)) => {
            let mut body = exposition(&status);
            if let Some((families, conflicts)) = remote.app_metrics().await {
                append_app_metrics(&mut body, &families, &conflicts);
            }
            let mut response = text(StatusCode::OK, body);
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "/metrics, /healthz, /readyz\n".into(),
        ),
    }
}

/// Puts the application's families before the exposition's `# EOF`, with the families not
/// merged (their type differs between workers) as `cluster_app_metric_conflicts`.
fn append_app_metrics(body: &mut String, families: &str, conflicts: &[String]) {
    if body.ends_with("# EOF\n") {
        body.truncate(body.len() - "# EOF\n".len());
    }
    body.push_str(families);
    if !conflicts.is_empty() {
        body.push_str("# HELP cluster_app_metric_conflicts Application metric families not merged: their type differs between workers.\n");
        body.push_str("# TYPE cluster_app_metric_conflicts gauge\n");
        for family in conflicts {
            body.push_str(&format!(
                "cluster_app_metric_conflicts{{family=\"{family}\"}} 1\n"
            ));
        }
    }
    body.push_str("# EOF\n");
}
