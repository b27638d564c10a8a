//! gRPC through restarts (issue 25): tonic's client against the `grpc` example under
//! `cluster`, unary calls and resumable server streams through three rolling restarts.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cluster_examples::ticker::ticker_client::TickerClient;
use cluster_examples::ticker::{HelloRequest, TicksRequest};
use rustix::process::Signal;
use support::{ClusterProcess, free_port, workspace_bin};
use tonic::transport::{Channel, Endpoint};

const LIMIT: Duration = Duration::from_secs(30);

/// Whether a call was never processed by a server: hyper cancels a request queued on a
/// connection that closed before sending it (its GOAWAY arrived first), and a stream the
/// client opened after the server's final GOAWAY left (above its last stream id) is refused
/// with that GOAWAY's NO_ERROR (RFC 9113 §6.8: not processed, safe to retry). gRPC's
/// transparent retry covers exactly these; tonic has none, so the test does it.
fn never_sent(status: &tonic::Status) -> bool {
    use std::error::Error as _;
    let mut source = status.source();
    while let Some(error) = source {
        if error
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        if error.downcast_ref::<h2::Error>().is_some_and(|e| {
            e.is_go_away() && e.is_remote() && e.reason() == Some(h2::Reason::NO_ERROR)
        }) {
            return true;
        }
        source = error.source();
    }
    false
}

/// What a caller saw: calls that succeeded, calls retried because they were never sent,
/// and failures.
#[derive(Debug, Default)]
struct Calls {
    ok: u64,
    unsent: u64,
    failed: Vec<String>,
}

/// Unary calls in a loop until stopped.
async fn unary_calls(channel: Channel, stop: Arc<AtomicBool>) -> Calls {
    let mut client = TickerClient::new(channel);
    let mut calls = Calls::default();
    while !stop.load(Ordering::SeqCst) {
        let request = HelloRequest {
            name: "test".into(),
        };
        match client.hello(request).await {
            Ok(reply) if reply.get_ref().message == "Hello, test" => calls.ok += 1,
            Ok(reply) => calls.failed.push(format!("{reply:?}")),
            Err(status) if never_sent(&status) => calls.unsent += 1,
            Err(status) => calls.failed.push(format!("{status:?}")),
        }
    }
    calls
}

/// What one resumable stream saw.
#[derive(Debug, Default)]
struct Resumed {
    ticks: u64,
    /// Streams ended early with UNAVAILABLE by a draining worker, each resumed.
    resumed: u64,
    /// Starts retried because they never left the client.
    unsent: u64,
    /// Ends of any other kind: failures.
    failures: Vec<String>,
    /// Worker pids that served the stream.
    pids: std::collections::BTreeSet<u32>,
}

/// Asks for `count` ticks every 20 ms, resuming from the next tick whenever a worker ends
/// the stream with UNAVAILABLE; checks each tick is the next one.
async fn resumable_stream(channel: Channel, count: u64) -> Resumed {
    let mut client = TickerClient::new(channel);
    let mut seen = Resumed::default();
    let deadline = Instant::now() + LIMIT;
    while seen.ticks < count && Instant::now() < deadline {
        let request = TicksRequest {
            from: seen.ticks,
            count: count - seen.ticks,
            every_ms: 20,
        };
        let mut stream = match client.ticks(request).await {
            Ok(response) => response.into_inner(),
            Err(status) if never_sent(&status) => {
                seen.unsent += 1;
                continue;
            }
            Err(status) => {
                seen.failures.push(format!("start: {status:?}"));
                continue;
            }
        };
        loop {
            match stream.message().await {
                Ok(Some(tick)) if tick.n == seen.ticks => {
                    seen.ticks += 1;
                    seen.pids.insert(tick.pid);
                }
                Ok(Some(tick)) => {
                    seen.failures
                        .push(format!("tick {} after {}", tick.n, seen.ticks));
                    return seen;
                }
                Ok(None) => break,
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    seen.resumed += 1;
                    break;
                }
                Err(status) => {
                    seen.failures.push(format!("{status:?}"));
                    break;
                }
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_and_server_streams_survive_three_rolling_restarts() {
    let port = free_port();
    let program = workspace_bin("grpc");
    let address = format!("127.0.0.1:{port}");
    let cluster = ClusterProcess::start(&[
        "-w",
        "2",
        "--drain-spread",
        "1s",
        program.to_str().unwrap(),
        &address,
    ]);
    cluster.wait_for("all workers ready", LIMIT);
    let endpoint = Endpoint::from_shared(format!("http://{address}")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for _ in 0..4 {
        let channel = endpoint.connect().await.expect("connect");
        callers.push(tokio::spawn(unary_calls(channel, stop.clone())));
    }
    let streams: Vec<_> = (0..4)
        .map(|_| {
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                let channel = endpoint.connect().await.expect("connect");
                resumable_stream(channel, 300).await
            })
        })
        .collect();
    let restarts = Arc::new(AtomicU64::new(0));
    for round in 1..=3 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        cluster.signal(Signal::USR1);
        let deadline = Instant::now() + LIMIT;
        while cluster.count("rolling restart complete") < round {
            assert!(Instant::now() < deadline, "{}", cluster.output());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        restarts.fetch_add(1, Ordering::SeqCst);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let mut calls = Calls::default();
    for caller in callers {
        let seen = caller.await.unwrap();
        calls.ok += seen.ok;
        calls.unsent += seen.unsent;
        calls.failed.extend(seen.failed);
    }
    let mut streamed = Vec::new();
    for stream in streams {
        streamed.push(stream.await.unwrap());
    }
    let resumed: u64 = streamed.iter().map(|s| s.resumed).sum();
    let unsent = calls.unsent + streamed.iter().map(|s| s.unsent).sum::<u64>();
    eprintln!(
        "tonic through 3 restarts: {} unary calls, {} failed, {unsent} never sent (retried); 4 streams of 300 ticks resumed {resumed} times on {:?} workers",
        calls.ok,
        calls.failed.len(),
        streamed.iter().map(|s| s.pids.len()).collect::<Vec<_>>()
    );
    let failed = &calls.failed;
    assert!(failed.is_empty(), "{:?}", &failed[..failed.len().min(5)]);
    assert!(calls.ok > 500, "{calls:?}");
    assert!(unsent * 100 <= calls.ok, "{unsent} calls never sent");
    for stream in &streamed {
        assert!(stream.failures.is_empty(), "{stream:?}");
        assert_eq!(stream.ticks, 300, "{stream:?}");
        assert!(
            (1..=12).contains(&stream.resumed),
            "each restart ends the stream once or twice: {stream:?}"
        );
        assert!(
            stream.pids.len() >= 2,
            "resumed on another worker: {stream:?}"
        );
    }
}
