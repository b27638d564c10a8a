//! `--metrics ADDR`: Prometheus text at `/metrics`, and the probes Kubernetes and load
//! balancers want: `/healthz` (the supervision loop answers) and `/readyz` (enough workers
//! are ready). Served with hyper on a socket of its own; each scrape takes one status
//! snapshot, so counters come from the watcher and survive worker restarts.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::remote::Remote;
use crate::task::spawn_in;
use crate::{ClusterStatus, WorkerPhase};

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
            let mut response = text(StatusCode::OK, exposition(&status));
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SlotLabel {
    slot: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RestartLabels {
    slot: u32,
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// The Prometheus (OpenMetrics) text for one snapshot; names prefixed `cluster_`,
/// per-worker series labelled by slot.
pub fn exposition(status: &ClusterStatus) -> String {
    let mut registry = Registry::with_prefix("cluster");
    let workers = Family::<StateLabel, Gauge>::default();
    registry.register("workers", "Worker processes by state", workers.clone());
    let wanted = Gauge::<i64>::default();
    registry.register("workers_wanted", "Slots the cluster runs", wanted.clone());
    let restarts = Family::<RestartLabels, Counter>::default();
    registry.register(
        "restarts",
        "Replacements of a slot's worker, by cause",
        restarts.clone(),
    );
    let uptime = Family::<SlotLabel, Gauge<f64, AtomicU64>>::default();
    registry.register(
        "worker_uptime_seconds",
        "Age of the slot's current worker",
        uptime.clone(),
    );
    let rss = Family::<SlotLabel, Gauge>::default();
    registry.register(
        "worker_rss_bytes",
        "Resident memory of the worker's process tree",
        rss.clone(),
    );
    let cpu = Family::<SlotLabel, Counter<f64, AtomicU64>>::default();
    registry.register(
        "worker_cpu_seconds",
        "CPU time of the worker's process tree",
        cpu.clone(),
    );
    let heartbeat = Family::<SlotLabel, Gauge<f64, AtomicU64>>::default();
    registry.register(
        "worker_heartbeat_age_seconds",
        "Time since the worker's last heartbeat",
        heartbeat.clone(),
    );
    let backoff = Family::<SlotLabel, Gauge<f64, AtomicU64>>::default();
    registry.register(
        "backoff_seconds",
        "Time left before a backing-off slot starts again",
        backoff.clone(),
    );
    let queued = Family::<SlotLabel, Gauge>::default();
    registry.register(
        "listen_queue",
        "Connections waiting in the accept queues of the slot's sockets (reuseport)",
        queued.clone(),
    );
    let open = Family::<SlotLabel, Gauge>::default();
    registry.register(
        "worker_open_connections",
        "Connections handed to the worker and not yet closed (least-conn)",
        open.clone(),
    );
    let rolling = Family::<OutcomeLabel, Counter>::default();
    registry.register(
        "rolling_restarts",
        "Rolling restarts by outcome",
        rolling.clone(),
    );

    let mut by_state = [
        ("starting", 0),
        ("ready", 0),
        ("stopping", 0),
        ("killed", 0),
    ];
    for slot in &status.slots {
        let label = SlotLabel { slot: slot.slot };
        for (cause, count) in [
            ("crashed", slot.restarts.crashed),
            ("hung", slot.restarts.hung),
            ("rolling", slot.restarts.rolling),
            ("requested", slot.restarts.requested),
            ("recycled", slot.restarts.recycled),
        ] {
            restarts
                .get_or_create(&RestartLabels {
                    slot: slot.slot,
                    cause,
                })
                .inc_by(count);
        }
        if let Some(left) = slot.backing_off {
            backoff.get_or_create(&label).set(left.as_secs_f64());
        }
        if let Some(waiting) = slot.queued {
            queued.get_or_create(&label).set(i64::from(waiting));
        }
        for worker in &slot.workers {
            let state = worker.phase.as_str();
            if let Some(entry) = by_state.iter_mut().find(|(s, _)| *s == state) {
                entry.1 += 1;
            }
            if !worker.current {
                continue;
            }
            uptime
                .get_or_create(&label)
                .set(worker.uptime.as_secs_f64());
            if let Some(count) = worker.open_connections {
                open.get_or_create(&label)
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
            }
            if let Some(bytes) = worker.rss {
                rss.get_or_create(&label)
                    .set(i64::try_from(bytes).unwrap_or(i64::MAX));
            }
            if let Some(used) = worker.cpu {
                cpu.get_or_create(&label).inc_by(used.as_secs_f64());
            }
            if let Some(age) = worker.heartbeat_age
                && worker.phase == WorkerPhase::Ready
            {
                heartbeat.get_or_create(&label).set(age.as_secs_f64());
            }
        }
    }
    for (state, count) in by_state {
        workers.get_or_create(&StateLabel { state }).set(count);
    }
    wanted.set(status.wanted_workers() as i64);
    rolling
        .get_or_create(&OutcomeLabel {
            outcome: "completed",
        })
        .inc_by(status.rolling_restarts_completed);
    rolling
        .get_or_create(&OutcomeLabel { outcome: "failed" })
        .inc_by(status.rolling_restarts_failed);
    let mut text = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}
