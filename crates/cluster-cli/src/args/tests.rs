//! The command line's definition, defaults and checks.

use super::*;
use clap::CommandFactory;

fn parse(args: &[&str]) -> Result<Args, clap::Error> {
    Args::try_parse_from(std::iter::once("cluster").chain(args.iter().copied()))
}

/// The defaults shown by `--help` are the library's: a changed library default shows up
/// here rather than as a silently different cluster.
#[test]
fn defaults_are_the_libraries() {
    let args = parse(&["prog"]).unwrap();
    let ours = args.watcher_config().unwrap();
    let library = WatcherConfig::new("prog");
    assert_eq!(ours.shutdown_timeout, library.shutdown_timeout);
    assert_eq!(ours.ready_timeout, library.ready_timeout);
    assert_eq!(ours.heartbeat_interval, library.heartbeat_interval);
    assert_eq!(ours.heartbeat_timeout, library.heartbeat_timeout);
    assert_eq!(ours.backoff_initial, library.backoff_initial);
    assert_eq!(ours.backoff_max, library.backoff_max);
    assert_eq!(ours.min_uptime, library.min_uptime);
    assert_eq!(ours.restart_parallelism, library.restart_parallelism);
    assert_eq!(ours.balance, library.balance);
}

#[test]
fn every_knob_reaches_the_configuration() {
    let args = parse(&[
        "-t",
        "3",
        "--ready-timeout",
        "2m",
        "--heartbeat-interval",
        "250ms",
        "--heartbeat-timeout",
        "2s",
        "--backoff-initial",
        "50ms",
        "--backoff-max",
        "1m",
        "--min-uptime",
        "5s",
        "--restart-parallelism",
        "3",
        "--balance",
        "round-robin",
        "prog",
        "--",
        "--port",
        "1",
    ])
    .unwrap();
    let config = args.watcher_config().unwrap();
    assert_eq!(config.shutdown_timeout, Duration::from_secs(3));
    assert_eq!(config.ready_timeout, Duration::from_secs(120));
    assert_eq!(config.heartbeat_interval, Duration::from_millis(250));
    assert_eq!(config.heartbeat_timeout, Duration::from_secs(2));
    assert_eq!(config.backoff_initial, Duration::from_millis(50));
    assert_eq!(config.backoff_max, Duration::from_secs(60));
    assert_eq!(config.min_uptime, Duration::from_secs(5));
    assert_eq!(config.restart_parallelism, 3);
    assert_eq!(config.balance, Balance::RoundRobin);
    assert_eq!(config.args, ["--port", "1"]);
}

#[test]
fn contradicting_knobs_are_rejected() {
    for args in [
        &[
            "--heartbeat-timeout",
            "1s",
            "--heartbeat-interval",
            "2s",
            "p",
        ][..],
        &["--heartbeat-interval", "0", "p"],
        &["--ready-timeout", "0ms", "p"],
        &["--backoff-initial", "20s", "p"],
    ] {
        let parsed = parse(args).unwrap();
        assert!(parsed.watcher_config().is_err(), "{args:?}");
    }
}

#[test]
fn clap_accepts_the_definition() {
    Args::command().debug_assert();
}

#[test]
fn balance_takes_a_hash_key_and_maps_hash_ip_to_reuseport_for_programs_given_listeners() {
    use cluster_watcher::HashKey;
    let config = parse(&["--balance", "hash=cookie:sid", "p"])
        .unwrap()
        .watcher_config()
        .unwrap();
    assert_eq!(config.balance, Balance::Hash);
    assert_eq!(config.sticky_key(), Some(HashKey::Cookie("sid".into())));
    assert_eq!(config.balance_description(), "hash=cookie:sid");
    let config = parse(&["--balance", "hash", "p"])
        .unwrap()
        .watcher_config()
        .unwrap();
    assert_eq!(config.sticky_key(), Some(HashKey::Ip));
    let listen = ["--balance", "hash=ip", "--listen", "127.0.0.1:0", "p"];
    let config = parse(&listen).unwrap().watcher_config().unwrap();
    assert_eq!(config.balance, Balance::Reuseport);
    assert_eq!(config.balance_description(), "reuseport hash=ip");
    let cookie = [
        "--balance",
        "hash=cookie:sid",
        "--listen",
        "127.0.0.1:0",
        "p",
    ];
    let error = parse(&cookie)
        .unwrap()
        .watcher_config()
        .unwrap_err()
        .to_string();
    assert!(error.contains("can use hash=ip"), "{error}");
    for bad in ["hash=", "hash=ip:1", "hash=url:x", "sticky"] {
        assert!(parse(&["--balance", bad, "p"]).is_err(), "{bad}");
    }
}
