//! HTTPS through the serve loop's acceptor (issue 25): the `tls` example (tokio-rustls,
//! ALPN `h2` and `http/1.1`) under `cluster`, both protocols answered, HTTP/2 over TLS
//! drained with GOAWAY through restarts under h2load.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use support::long_lived::h2load_rows;
use support::{ClusterProcess, free_port, workspace_bin};

const LIMIT: Duration = Duration::from_secs(30);

fn cert() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tls/cert.pem")
}

/// `curl` over HTTPS with this HTTP version flag; the body.
fn curl(port: u16, version: &str) -> String {
    let output = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", version, "--cacert"])
        .arg(cert())
        .arg(format!("https://localhost:{port}/"))
        .output()
        .expect("curl");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn https_speaks_both_versions_by_alpn_and_drains_http2_through_restarts() {
    let port = free_port();
    let program = workspace_bin("tls");
    let mut cluster = ClusterProcess::start(&[
        "-w",
        "2",
        program.to_str().unwrap(),
        &format!("127.0.0.1:{port}"),
    ]);
    cluster.wait_for("all workers ready", LIMIT);
    assert!(curl(port, "--http2").starts_with("Hello over HTTP/2.0"));
    assert!(curl(port, "--http1.1").starts_with("Hello over HTTP/1.1"));

    let log = std::env::temp_dir().join(format!("h2load-tls-{}.tsv", std::process::id()));
    let client = std::process::Command::new("h2load")
        .args(["-c16", "-m10", "-t1", "-D", "6"])
        .arg(format!("--log-file={}", log.display()))
        .arg(format!("https://127.0.0.1:{port}/"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("h2load (tests/peers/install.sh installs it)");
    for round in 1..=2 {
        std::thread::sleep(Duration::from_millis(1500));
        cluster.signal(Signal::USR1);
        let deadline = Instant::now() + LIMIT;
        while cluster.count("rolling restart complete") < round {
            assert!(Instant::now() < deadline, "{}", cluster.output());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let output = client.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&output.stdout);
    let rows = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    let (ok, failed, unsent) = h2load_rows(&rows);
    eprintln!(
        "h2load over TLS through 2 restarts: {ok} streams succeeded, {failed} sent and failed, {unsent} never sent"
    );
    assert!(summary.contains("Application protocol: h2"), "{summary}");
    assert!(ok > 500, "{summary}");
    assert_eq!(failed, 0, "{summary}");
    assert!(unsent * 100 <= ok, "{unsent} never sent of {ok}");
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success(), "{}", cluster.output());
}
