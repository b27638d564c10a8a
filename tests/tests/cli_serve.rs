//! The `cluster` binary running the example servers, in both balance modes.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use rustix::process::Signal;
use support::{ClusterProcess, workspace_bin};

const LIMIT: Duration = Duration::from_secs(20);

/// A GET on a new connection; returns (headers, body) and the client's own address.
fn get(port: u16, path: &str) -> (String, String, std::net::SocketAddr) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let local = stream.local_addr().unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    (head.to_ascii_lowercase(), body.to_owned(), local)
}

fn serve_hello(balance: &str) {
    let hello = workspace_bin("hello-http");
    let mut cluster = ClusterProcess::start(&[
        "-w",
        "2",
        "--balance",
        balance,
        hello.to_str().unwrap(),
        "127.0.0.1:0",
    ]);
    cluster.wait_for("all workers ready", LIMIT);
    let port = cluster.port();
    let mut workers = std::collections::HashSet::new();
    for _ in 0..10 {
        let (head, body, _) = get(port, "/");
        assert_eq!(body, "Hello, World!");
        let worker = head
            .lines()
            .find_map(|l| l.strip_prefix("x-cluster-worker: "))
            .unwrap()
            .to_owned();
        workers.insert(worker);
    }
    assert!(workers.iter().all(|w| w == "1" || w == "2"), "{workers:?}");
    if balance == "round-robin" {
        assert_eq!(workers.len(), 2);
    }
    // Forwarded worker logs name their worker.
    assert!(
        cluster
            .output()
            .lines()
            .any(|l| l.contains("listening on") && l.contains("worker=1"))
    );
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success(), "{}", cluster.output());
}

#[test]
fn hello_http_serves_in_shared_mode() {
    serve_hello("shared");
}

#[test]
fn hello_http_serves_in_round_robin_mode() {
    serve_hello("round-robin");
}

fn serve_axum(balance: Option<&str>) {
    let axum = workspace_bin("axum-hello");
    let mut cluster = match balance {
        Some(balance) => ClusterProcess::start(&[
            "-w",
            "2",
            "--balance",
            balance,
            axum.to_str().unwrap(),
            "127.0.0.1:0",
        ]),
        None => {
            // Standalone: the example itself, no cluster.
            let mut child = std::process::Command::new(&axum)
                .arg("127.0.0.1:0")
                .stderr(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
            let mut line = String::new();
            while !line.contains("listening on") {
                line.clear();
                std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
            }
            let port: u16 = line
                .rsplit(':')
                .next()
                .unwrap()
                .trim()
                .trim_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .unwrap();
            let (_, body, _) = get(port, "/");
            assert_eq!(body, "Hello, World!");
            assert_eq!(get(port, "/worker").1, "standalone");
            let (_, peer, local) = get(port, "/peer");
            assert_eq!(peer, local.to_string());
            // SIGINT, as from a terminal: a graceful stop with status 0.
            rustix::process::kill_process(
                rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
                Signal::INT,
            )
            .unwrap();
            assert!(support::wait_for(&mut child, LIMIT).success());
            return;
        }
    };
    cluster.wait_for("all workers ready", LIMIT);
    let port = cluster.port();
    assert_eq!(get(port, "/").1, "Hello, World!");
    let worker = get(port, "/worker").1;
    assert!(worker == "1" || worker == "2", "{worker}");
    let (_, peer, local) = get(port, "/peer");
    assert_eq!(
        peer,
        local.to_string(),
        "ConnectInfo is the real client address"
    );
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success(), "{}", cluster.output());
}

#[test]
fn axum_hello_serves_in_shared_mode() {
    serve_axum(Some("shared"));
}

#[test]
fn axum_hello_serves_in_round_robin_mode() {
    serve_axum(Some("round-robin"));
}

#[test]
fn axum_hello_serves_standalone() {
    serve_axum(None);
}

/// `--name` tags every line: the CLI's own, the watcher's tasks' (worker started, exited)
/// and the workers' forwarded logs.
#[test]
fn every_log_line_carries_the_cluster_name() {
    let hello = workspace_bin("hello-http");
    let mut cluster = ClusterProcess::start(&[
        "--name",
        "shop-api",
        "-w",
        "2",
        hello.to_str().unwrap(),
        "127.0.0.1:0",
    ]);
    cluster.wait_for("all workers ready", LIMIT);
    let port = cluster.port();
    get(port, "/");
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success(), "{}", cluster.output());
    let output = cluster.output();
    let lines: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines.iter().any(|l| l.contains("listening on")),
        "worker logs are forwarded:\n{output}"
    );
    assert!(
        lines.iter().any(|l| l.contains("worker stopped")),
        "worker exits are logged:\n{output}"
    );
    let untagged: Vec<&&str> = lines.iter().filter(|l| !l.contains("shop-api")).collect();
    assert!(untagged.is_empty(), "lines without the name: {untagged:#?}");
}
