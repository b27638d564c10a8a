//! `--slow-start`: a replacement worker's share of new connections ramps from a tenth to
//! full over the window, measured second by second from the responses, in round-robin and
//! reuseport modes.

mod support;

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_testkit::{header_of, http_get_from};
use rustix::process::Signal;
use support::hello_cluster;

const LIMIT: Duration = Duration::from_secs(30);

/// Which worker (pid) answered each request, and when, from `clients` threads of new connections.
struct Recorder {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<(Instant, String)>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Recorder {
    fn start(port: u16, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|_| {
                let (stop, answers) = (stop.clone(), answers.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok(response) = http_get_from(Ipv4Addr::LOCALHOST, port, "/", "") {
                            let worker = header_of(&response, "x-cluster-pid")
                                .unwrap_or_default()
                                .to_owned();
                            answers.lock().unwrap().push((Instant::now(), worker));
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            answers,
            threads,
        }
    }

    fn finish(self) -> Vec<(Instant, String)> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
        Arc::try_unwrap(self.answers).unwrap().into_inner().unwrap()
    }
}

/// Kills one worker of a 2-worker cluster under load and returns its replacement's share of
/// the requests in each second after it answered first, for `seconds`.
fn shares_after_a_replacement(balance: &str, seconds: usize) -> Vec<f64> {
    let (mut cluster, port) =
        hello_cluster(&["-w", "2", "--balance", balance, "--slow-start", "4s"]);
    // Past the first workers' own slow start.
    std::thread::sleep(Duration::from_millis(4200));
    let recorder = Recorder::start(port, 4);
    std::thread::sleep(Duration::from_millis(300));
    let pids = cluster.worker_pids();
    let victim = *pids.iter().max().unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(victim as i32).unwrap(),
        Signal::KILL,
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(seconds as u64 + 2));
    let answers = recorder.finish();
    cluster.signal(Signal::TERM);
    assert!(cluster.wait(LIMIT).success(), "{}", cluster.output());
    // The replacement: the pid that was not there before the kill; its share counts from
    // its first answer.
    let victim = victim.to_string();
    let survivor = pids
        .iter()
        .find(|p| p.to_string() != victim)
        .unwrap()
        .to_string();
    let first = answers
        .iter()
        .find(|(_, pid)| *pid != victim && *pid != survivor)
        .unwrap_or_else(|| panic!("no replacement answered: {}", cluster.output()));
    let (back, slot) = (first.0, first.1.clone());
    let slot = &slot;
    (0..seconds)
        .map(|second| {
            let from = back + Duration::from_secs(second as u64);
            let to = from + Duration::from_secs(1);
            let window: Vec<&(Instant, String)> = answers
                .iter()
                .filter(|(t, _)| *t >= from && *t < to)
                .collect();
            let ours = window.iter().filter(|(_, w)| w == slot).count();
            ours as f64 / window.len().max(1) as f64
        })
        .collect()
}

fn check(balance: &str) {
    let shares = shares_after_a_replacement(balance, 5);
    let percent: Vec<String> = shares
        .iter()
        .map(|s| format!("{:.0}%", s * 100.0))
        .collect();
    eprintln!(
        "figure: --slow-start 4s, {balance}, 2 workers: the replacement's share second by second: {}",
        percent.join(", ")
    );
    // A tenth of a full share against a full one is about 9 %, half is about 33 %; full, 50 %.
    assert!(shares[0] < 0.3, "{percent:?}");
    assert!(shares[0] < shares[3], "{percent:?}");
    assert!(shares[4] > 0.35, "{percent:?}");
}

#[test]
fn a_replacement_ramps_up_in_round_robin_mode() {
    check("round-robin");
}

#[test]
fn a_replacement_ramps_up_in_reuseport_mode() {
    check("reuseport");
}
