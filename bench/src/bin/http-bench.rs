//! The HTTP benchmark harness: `cluster` against hand-written references and Node's cluster,
//! interleaved in one run, medians with min–max, ratios against the targets, and a chart.
//!
//! Run through `bench/run.sh` (which installs wrk and builds the release binaries). Knobs:
//! `BENCH_WORKERS` (default `2 4`), `BENCH_DURATION` seconds per load (default 5),
//! `BENCH_ROUNDS` (default 3), `BENCH_OUT` (chart path, default `bench/results/http.svg`),
//! `BENCH_ONLY` (comma-separated name prefixes: run only those configurations).
//! Only 127.0.0.1; every server runs in a process group of its own and only those groups are
//! signalled.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cluster_bench::{
    Samples, ServerProcess, children_of, free_port, http_ok, print_ratio, rss_kib, wrk,
};

struct Config {
    name: String,
    workers: usize,
    command: Vec<String>,
    env: Vec<(String, String)>,
}

fn env_text(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned();
    let release = root.join("target/release");
    let bin = |p: &str| release.join(p).to_string_lossy().into_owned();
    let node_script = root
        .join("bench/node/cluster.js")
        .to_string_lossy()
        .into_owned();
    let workers: Vec<usize> = env_text("BENCH_WORKERS", "2 4")
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let seconds: u64 = env_text("BENCH_DURATION", "5").parse().unwrap_or(5);
    let rounds: usize = env_text("BENCH_ROUNDS", "3").parse().unwrap_or(3);
    let out = PathBuf::from(env_text(
        "BENCH_OUT",
        &root.join("bench/results/http.svg").to_string_lossy(),
    ));
    let hello = bin("examples/hello-http");
    let cluster = bin("cluster");
    let reference = bin("ref-server");

    let mut configs = Vec::new();
    // One worker, keep-alive: the code's own cost, without the accept race deciding how
    // the connections landed on two workers sharing two cores.
    if env_text("BENCH_ONE_WORKER", "1") != "0" {
        configs.push(Config {
            name: "cluster shared, 1w".into(),
            workers: 1,
            command: vec![
                cluster.clone(),
                "-w".into(),
                "1".into(),
                "-l".into(),
                "warn".into(),
                hello.clone(),
                "127.0.0.1:{port}".into(),
            ],
            env: vec![],
        });
        configs.push(Config {
            name: "ref (b) shared socket, 1w".into(),
            workers: 1,
            command: vec![
                reference.clone(),
                "shared".into(),
                "1".into(),
                "127.0.0.1:{port}".into(),
            ],
            env: vec![],
        });
    }
    for &n in &workers {
        let w = n.to_string();
        let cluster_cmd = |balance: &str| {
            vec![
                cluster.clone(),
                "-w".into(),
                w.clone(),
                "--balance".into(),
                balance.into(),
                "-l".into(),
                "warn".into(),
                hello.clone(),
                "127.0.0.1:{port}".into(),
            ]
        };
        configs.push(Config {
            name: format!("cluster shared, {n}w"),
            workers: n,
            command: cluster_cmd("shared"),
            env: vec![],
        });
        for balance in ["round-robin", "reuseport", "least-conn", "hash=ip"] {
            configs.push(Config {
                name: format!("cluster {balance}, {n}w"),
                workers: n,
                command: cluster_cmd(balance),
                env: vec![],
            });
        }
        configs.push(Config {
            name: format!("ref (a) tokio multi-thread, {n}w"),
            workers: n,
            command: vec![reference.clone(), "tokio".into(), "127.0.0.1:{port}".into()],
            env: vec![("TOKIO_WORKER_THREADS".into(), w.clone())],
        });
        configs.push(Config {
            name: format!("ref (b) shared socket, {n}w"),
            workers: n,
            command: vec![
                reference.clone(),
                "shared".into(),
                w.clone(),
                "127.0.0.1:{port}".into(),
            ],
            env: vec![],
        });
        configs.push(Config {
            name: format!("ref (c) fd passing, {n}w"),
            workers: n,
            command: vec![
                reference.clone(),
                "fdpass".into(),
                w.clone(),
                "127.0.0.1:{port}".into(),
            ],
            env: vec![],
        });
        for policy in ["none", "rr"] {
            configs.push(Config {
                name: format!("node cluster SCHED_{}, {n}w", policy.to_uppercase()),
                workers: n,
                command: vec!["node".into(), node_script.clone(), "{port}".into()],
                env: vec![
                    ("WORKERS".into(), w.clone()),
                    ("NODE_CLUSTER_SCHED_POLICY".into(), policy.into()),
                ],
            });
        }
    }

    // Unmodified servers: the same uvicorn app under `cluster --listen` and under gunicorn's
    // arbiter with uvicorn's worker class (installed by tests/peers/install.sh).
    let venv = root.join("target/peers/venv/bin");
    let peers = root.join("tests/peers").to_string_lossy().into_owned();
    if env_text("BENCH_PEERS", "1") != "0" && venv.join("uvicorn").exists() {
        let uvicorn = venv.join("uvicorn").to_string_lossy().into_owned();
        let gunicorn = venv.join("gunicorn").to_string_lossy().into_owned();
        configs.push(Config {
            name: "uvicorn under cluster --listen, 2w".into(),
            workers: 2,
            command: [
                cluster.as_str(),
                "-w",
                "2",
                "-l",
                "warn",
                "--listen",
                "127.0.0.1:{port}",
                &uvicorn,
                "--fd",
                "3",
                "--no-access-log",
                "--log-level",
                "warning",
                "--app-dir",
                &peers,
                "app:app",
            ]
            .map(String::from)
            .to_vec(),
            env: vec![],
        });
        configs.push(Config {
            name: "gunicorn -k uvicorn worker, 2w".into(),
            workers: 2,
            command: [
                gunicorn.as_str(),
                "-w",
                "2",
                "-k",
                "uvicorn.workers.UvicornWorker",
                "--log-level",
                "warning",
                "--chdir",
                &peers,
                "-b",
                "127.0.0.1:{port}",
                "app:app",
            ]
            .map(String::from)
            .to_vec(),
            env: vec![],
        });
    }

    // The control plane's cost: the same cluster, once left alone and once scraped
    // (`/metrics` and `cluster status`) every 100 ms while wrk runs.
    if env_text("BENCH_SCRAPE", "1") != "0" {
        for (name, scraped) in [
            ("cluster shared, 2w, not scraped", false),
            ("cluster shared, 2w, scraped every 100 ms", true),
        ] {
            let mut command: Vec<String> = [cluster.as_str(), "-w", "2", "-l", "warn"]
                .map(String::from)
                .to_vec();
            if scraped {
                command.extend(
                    ["--metrics", "127.0.0.1:{mport}", "--control", "{control}"].map(String::from),
                );
            }
            command.extend([hello.clone(), "127.0.0.1:{port}".into()]);
            configs.push(Config {
                name: name.into(),
                workers: 2,
                command,
                env: vec![],
            });
        }
    }

    // BENCH_ONLY="cluster shared,ref (b)": only the configurations whose names start so (the
    // ratios between them are still printed).
    if let Ok(only) = std::env::var("BENCH_ONLY") {
        let prefixes: Vec<&str> = only.split(',').map(str::trim).collect();
        configs.retain(|c| prefixes.iter().any(|p| c.name.starts_with(p)));
    }
    let started = Instant::now();
    // BENCH_SKIP_HTTP=1 measures only start-up, respawn and memory.
    if std::env::var("BENCH_SKIP_HTTP").is_ok_and(|v| v == "1") {
        configs.clear();
    }
    // (config, load) -> samples of req/s and p99.
    let mut rps: BTreeMap<(usize, &str), Samples> = BTreeMap::new();
    let mut p99: BTreeMap<(usize, &str), Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        // Each round starts one configuration later: a place in the round (first after the
        // previous round's last, say) favours no configuration in every round.
        let order = (0..configs.len()).map(|k| (round + k) % configs.len());
        for (i, config) in order.map(|i| (i, &configs[i])) {
            let port = free_port();
            let metrics_port = free_port();
            let control = std::env::temp_dir()
                .join(format!("cluster-bench-{}", std::process::id()))
                .join("control.sock");
            let command: Vec<String> = config
                .command
                .iter()
                .map(|a| {
                    a.replace("{mport}", &metrics_port.to_string())
                        .replace("{control}", &control.to_string_lossy())
                })
                .collect();
            let server = ServerProcess::command(&command, &config.env, port);
            server.wait_ready(port);
            let scraped = config.name.contains("scraped every");
            for (load, close) in [("keep-alive", false), ("close", true)] {
                let scraper = scraped.then(|| Scraper::start(metrics_port, &control, &cluster));
                let run = wrk(port, seconds, close);
                if let Some(scraper) = scraper {
                    scraper.finish();
                }
                let (r, p) = (run.rate, run.p99_ms);
                rps.entry((i, load))
                    .or_insert_with(|| Samples {
                        name: config.name.clone(),
                        rates: vec![],
                    })
                    .rates
                    .push(r);
                p99.entry((i, load)).or_default().push(p);
            }
            drop(server);
            eprintln!(
                "round {}/{rounds}: {} done ({:.0} s)",
                round + 1,
                config.name,
                started.elapsed().as_secs_f64()
            );
        }
    }

    println!(
        "\n## HTTP throughput (wrk -t1 -c64, {seconds} s per run, {rounds} rounds interleaved)\n"
    );
    println!(
        "| configuration | keep-alive req/s (min–max) | p99 ms | close req/s (min–max) | p99 ms |"
    );
    println!("|---|---:|---:|---:|---:|");
    let median = |v: &[f64]| {
        Samples {
            name: String::new(),
            rates: v.to_vec(),
        }
        .median()
    };
    for (i, config) in configs.iter().enumerate() {
        let ka = &rps[&(i, "keep-alive")];
        let cl = &rps[&(i, "close")];
        let (ka_min, ka_max) = ka.range();
        let (cl_min, cl_max) = cl.range();
        println!(
            "| {} | {:.0} ({:.0}–{:.0}) | {:.2} | {:.0} ({:.0}–{:.0}) | {:.2} |",
            config.name,
            ka.median(),
            ka_min,
            ka_max,
            median(&p99[&(i, "keep-alive")]),
            cl.median(),
            cl_min,
            cl_max,
            median(&p99[&(i, "close")])
        );
    }
    let found = |prefix: &str, n: usize| {
        configs
            .iter()
            .position(|c| c.name.starts_with(prefix) && c.workers == n)
    };
    let find = |prefix: &str, n: usize| found(prefix, n).unwrap();
    println!("\n## Ratios against the targets\n");
    let position = |needle: &str| configs.iter().position(|c| c.name.contains(needle));
    if let (Some(scraped), Some(alone)) = (position("scraped every"), position("not scraped")) {
        for load in ["keep-alive", "close"] {
            let ratio = rps[&(scraped, load)].median() / rps[&(alone, load)].median();
            print_ratio(
                &format!("2 workers, scraped every 100 ms / not scraped, {load}"),
                ratio,
                ">= 0.98x",
                ratio >= 0.98,
            );
        }
    }
    if found("uvicorn under cluster", 2).is_some() && found("gunicorn -k uvicorn", 2).is_some() {
        for load in ["keep-alive", "close"] {
            let ours = &rps[&(find("uvicorn under cluster", 2), load)];
            let theirs = &rps[&(find("gunicorn -k uvicorn", 2), load)];
            let ratio = ours.median() / theirs.median();
            print_ratio(
                &format!("2 workers, uvicorn under cluster / under gunicorn, {load}"),
                ratio,
                ">= 1.0x",
                ratio >= 1.0,
            );
        }
    }
    if found("cluster shared", 1).is_some() && found("ref (b)", 1).is_some() {
        let (ours, reference) = (
            &rps[&(find("cluster shared", 1), "keep-alive")],
            &rps[&(find("ref (b)", 1), "keep-alive")],
        );
        let ratio = ours.median() / reference.median();
        print_ratio(
            "1 worker, shared keep-alive / ref (b)",
            ratio,
            ">= 0.97x",
            ratio >= 0.97,
        );
    }
    for &n in workers.iter().filter(|_| !configs.is_empty()) {
        let samples =
            |prefix: &str, load: &'static str| -> &Samples { &rps[&(find(prefix, n), load)] };
        let checks = [
            (
                "shared keep-alive / ref (b)",
                ("cluster shared", "ref (b)", "keep-alive"),
                0.97,
            ),
            (
                "round-robin close / ref (c)",
                ("cluster round-robin", "ref (c)", "close"),
                0.95,
            ),
            (
                "round-robin close / node SCHED_RR",
                ("cluster round-robin", "node cluster SCHED_RR", "close"),
                2.3,
            ),
            (
                "reuseport keep-alive / ref (b)",
                ("cluster reuseport", "ref (b)", "keep-alive"),
                1.0,
            ),
            (
                "reuseport keep-alive / shared",
                ("cluster reuseport", "cluster shared", "keep-alive"),
                1.0,
            ),
            (
                "reuseport close / ref (b)",
                ("cluster reuseport", "ref (b)", "close"),
                1.0,
            ),
            (
                "least-conn close / ref (c)",
                ("cluster least-conn", "ref (c)", "close"),
                0.95,
            ),
            (
                "hash=ip close / ref (c)",
                ("cluster hash=ip", "ref (c)", "close"),
                0.95,
            ),
            (
                "shared keep-alive / node SCHED_NONE",
                ("cluster shared", "node cluster SCHED_NONE", "keep-alive"),
                0.0,
            ),
        ];
        for (label, (ours, reference, load), bound) in checks {
            if found(ours, n).is_none() || found(reference, n).is_none() {
                continue;
            }
            let (ours, reference) = (samples(ours, load), samples(reference, load));
            let ratio = ours.median() / reference.median();
            let label = format!("{n} workers, {label}");
            if bound == 0.0 {
                println!("- {label}: {ratio:.2}x (reported)");
            } else {
                print_ratio(&label, ratio, &format!(">= {bound}x"), ratio >= bound);
            }
            // The same ratio round by round: both runs of a pair were made minutes apart at
            // most, so this shows how much of a miss or a margin is the machine's drift.
            let per_round: Vec<String> = ours
                .rates
                .iter()
                .zip(&reference.rates)
                .map(|(a, b)| format!("{:.2}", a / b))
                .collect();
            println!("  - round by round: {}", per_round.join(", "));
        }
        // Spread between rounds, (max - min) / median: the accept race makes `shared`'s
        // keep-alive figure swing with how the connections happened to land.
        let spread = |prefix: &str| {
            let samples = samples(prefix, "keep-alive");
            let (low, high) = samples.range();
            (high - low) / samples.median()
        };
        if found("cluster reuseport", n).is_none() || found("cluster shared", n).is_none() {
            continue;
        }
        let (reuseport, shared) = (spread("cluster reuseport"), spread("cluster shared"));
        print_ratio(
            &format!("{n} workers, keep-alive spread between rounds, reuseport / shared"),
            if shared > 0.0 {
                reuseport / shared
            } else {
                1.0
            },
            "< 1.0x",
            reuseport < shared,
        );
        println!(
            "  - reuseport {:.0} %, shared {:.0} %",
            reuseport * 100.0,
            shared * 100.0
        );
    }

    // Start-up, respawn, memory: 4 workers.
    let n = 4;
    let four = |name: &str, command: Vec<String>, env: Vec<(String, String)>| Config {
        name: name.into(),
        workers: n,
        command,
        env,
    };
    let startup_configs = [
        four(
            "cluster shared",
            vec![
                cluster.clone(),
                "-w".into(),
                "4".into(),
                "-l".into(),
                "warn".into(),
                hello.clone(),
                "127.0.0.1:{port}".into(),
            ],
            vec![],
        ),
        four(
            "ref (b) shared socket",
            vec![
                reference.clone(),
                "shared".into(),
                "4".into(),
                "127.0.0.1:{port}".into(),
            ],
            vec![],
        ),
        four(
            "node cluster",
            vec!["node".into(), node_script.clone(), "{port}".into()],
            vec![("WORKERS".into(), "4".into())],
        ),
        four(
            "hello-http standalone (one process)",
            vec![hello.clone(), "127.0.0.1:{port}".into()],
            vec![],
        ),
        four(
            "cluster, 1 worker (one worker's cold start)",
            vec![
                cluster.clone(),
                "-w".into(),
                "1".into(),
                "-l".into(),
                "warn".into(),
                hello.clone(),
                "127.0.0.1:{port}".into(),
            ],
            vec![],
        ),
    ];
    let mut startup: Vec<Samples> = startup_configs
        .iter()
        .map(|c| Samples {
            name: c.name.clone(),
            rates: vec![],
        })
        .collect();
    for _ in 0..rounds.max(3) {
        for (config, samples) in startup_configs.iter().zip(&mut startup) {
            let port = free_port();
            let server = ServerProcess::command(&config.command, &config.env, port);
            samples
                .rates
                .push(server.wait_ready(port).as_secs_f64() * 1000.0);
        }
    }
    println!(
        "\n## Start-up: launch to first answer, 4 workers (ms; median of {} runs)\n",
        rounds.max(3)
    );
    for s in &startup {
        let (min, max) = s.range();
        println!("- {}: {:.1} ms ({:.1}–{:.1})", s.name, s.median(), min, max);
    }
    let ratio = startup[0].median() / startup[2].median();
    println!(
        "- cluster / node: {ratio:.2}x (target <= 0.25x: {})",
        if ratio <= 0.25 { "met" } else { "MISSED" }
    );

    // Respawn: SIGKILL one worker, time until the cluster logs the replacement ready.
    let port = free_port();
    let mut verbose = four("cluster", startup_configs[0].command.clone(), vec![]);
    verbose.command.retain(|a| a != "-l" && a != "warn");
    let launched = Instant::now();
    let mut server = ServerProcess::command_with_stdout(&verbose.command, &verbose.env, port);
    let lines = BufReader::new(server.child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, String)>();
    std::thread::spawn(move || {
        for line in lines.lines().map_while(Result::ok) {
            let _ = tx.send((Instant::now(), line));
        }
    });
    let all_ready = loop {
        let (at, line) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("cluster output");
        if line.contains("all workers ready") {
            break at - launched;
        }
    };
    server.wait_ready(port);
    std::thread::sleep(Duration::from_millis(300));
    let watcher_rss = rss_kib(server.pid());
    let worker_pids = children_of(server.pid());
    for _ in 0..200 {
        http_ok(port);
    }
    let worker_rss: Vec<u64> = worker_pids.iter().map(|&p| rss_kib(p)).collect();
    let mut respawns = Vec::new();
    for victim in worker_pids.iter().take(3) {
        while rx.try_recv().is_ok() {}
        let killed = Instant::now();
        cluster_bench::signal(*victim, rustix::process::Signal::KILL);
        loop {
            let (at, line) = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("replacement ready");
            if line.contains("worker ready") {
                respawns.push((at - killed).as_secs_f64() * 1000.0);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(server);
    let standalone =
        ServerProcess::command(&startup_configs[3].command, &startup_configs[3].env, port);
    standalone.wait_ready(port);
    for _ in 0..200 {
        http_ok(port);
    }
    let standalone_rss = rss_kib(standalone.pid());
    drop(standalone);
    let respawn = Samples {
        name: "respawn".into(),
        rates: respawns,
    };
    println!("\n## Respawn, memory (4 workers)\n");
    println!(
        "- launch of `cluster -w 4` to all 4 workers ready (its `start(4)`): {:.1} ms",
        all_ready.as_secs_f64() * 1000.0
    );
    let cold = startup[4].median();
    println!(
        "- respawn, SIGKILL to replacement ready: {:.1} ms median of {}; one worker's cold start (`cluster -w 1`, launch to first answer): {cold:.1} ms (target: no slower: {}); the program alone: {:.1} ms",
        respawn.median(),
        respawn.rates.len(),
        if respawn.median() <= cold {
            "met"
        } else {
            "MISSED"
        },
        startup[3].median()
    );
    println!(
        "- watcher RSS: {:.1} MiB (target <= 10 MiB: {})",
        watcher_rss as f64 / 1024.0,
        if watcher_rss <= 10 * 1024 {
            "met"
        } else {
            "MISSED"
        }
    );
    let avg = worker_rss.iter().sum::<u64>() as f64 / worker_rss.len().max(1) as f64;
    println!(
        "- worker RSS: {:.1} MiB each (hello-http in a cluster) vs {:.1} MiB standalone: {:+.1} MiB (target within 2 MiB: {})",
        avg / 1024.0,
        standalone_rss as f64 / 1024.0,
        (avg - standalone_rss as f64) / 1024.0,
        if (avg - standalone_rss as f64).abs() <= 2048.0 {
            "met"
        } else {
            "MISSED"
        }
    );
    if !configs.is_empty() {
        write_chart(&out, &configs, &rps);
    }
    println!(
        "\nchart: {} (total {:.0} s)",
        out.display(),
        started.elapsed().as_secs_f64()
    );
}

/// A grouped bar chart of median req/s per configuration, keep-alive and close, as SVG.
fn write_chart(path: &Path, configs: &[Config], rps: &BTreeMap<(usize, &str), Samples>) {
    let max = rps.values().map(Samples::median).fold(1.0, f64::max);
    let (row, left, width) = (34.0, 250.0, 520.0);
    let height = 60.0 + row * configs.len() as f64;
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{height}' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n<text x='10' y='20' font-size='14'>HTTP hello world, wrk -t1 -c64: median requests/s (blue keep-alive, orange new connection per request)</text>\n",
        left + width + 90.0
    );
    for (i, config) in configs.iter().enumerate() {
        let y = 40.0 + row * i as f64;
        svg += &format!(
            "<text x='{}' y='{}' text-anchor='end'>{}</text>\n",
            left - 8.0,
            y + 18.0,
            config.name
        );
        for (j, (load, color)) in [("keep-alive", "#4e79a7"), ("close", "#f28e2b")]
            .iter()
            .enumerate()
        {
            let value = rps[&(i, *load)].median();
            let w = width * value / max;
            let yy = y + 2.0 + 14.0 * j as f64;
            svg +=
                &format!("<rect x='{left}' y='{yy}' width='{w:.1}' height='12' fill='{color}'/>\n");
            svg += &format!(
                "<text x='{:.1}' y='{:.1}'>{value:.0}</text>\n",
                left + w + 4.0,
                yy + 11.0
            );
        }
    }
    svg += "</svg>\n";
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(path, svg).expect("write chart");
}

/// Scrapes `/metrics` and runs `cluster status` every 100 ms until finished.
struct Scraper {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Scraper {
    fn start(metrics_port: u16, control: &Path, cluster: &str) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (control, cluster, flag) = (control.to_owned(), cluster.to_owned(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", metrics_port)) {
                    use std::io::{Read, Write};
                    let _ = stream.write_all(
                        b"GET /metrics HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n",
                    );
                    let _ = stream.read_to_end(&mut Vec::new());
                }
                let _ = std::process::Command::new(&cluster)
                    .args(["status", "--control"])
                    .arg(&control)
                    .stdout(std::process::Stdio::null())
                    .status();
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Self { stop, thread }
    }

    fn finish(self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.thread.join();
    }
}
