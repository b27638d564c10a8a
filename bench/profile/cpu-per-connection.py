#!/usr/bin/env python3
"""CPU and context switches per request of each process of a server, during a wrk run.

A diagnostic for the round-robin path (how its parent and children compare with reference
(c)), not a benchmark: it reads utime/stime (clock ticks, so coarse) and the voluntary and
involuntary context switches from /proc of the server's first process and of its children,
before and after `wrk -t1 -c64 -H "Connection: close"` (a connection per request; with
PROFILE_LOAD=keep-alive, plain keep-alive) against 127.0.0.1, and prints them per request.
Configurations run interleaved, round after round.

    bench/profile/cpu-per-connection.py [ROUNDS] [CONFIG...]   # after bench/run.sh built
    CONFIG: rr, ref_c, shared, ref_b (default: rr ref_c); PROFILE_SECS=4 per run
"""
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
RELEASE = os.path.join(ROOT, "target", "release")
HZ = os.sysconf("SC_CLK_TCK")
CONFIGS = {
    "rr": ["cluster", "-w", "2", "--balance", "round-robin", "examples/hello-http", "ADDR"],
    "ref_c": ["ref-server", "fdpass", "2", "ADDR"],
    "shared": ["cluster", "-w", "2", "--balance", "shared", "examples/hello-http", "ADDR"],
    "ref_b": ["ref-server", "shared", "2", "ADDR"],
}


def children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2 :].split()[1]) == pid:
                found.append(int(entry))
    return found


def sample(pid):
    stat = open(f"/proc/{pid}/stat").read()
    fields = stat[stat.rfind(")") + 2 :].split()
    status = open(f"/proc/{pid}/status").read()
    switches = [
        int(re.search(rf"^{kind}_ctxt_switches:\s+(\d+)", status, re.M).group(1))
        for kind in ("voluntary", "nonvoluntary")
    ]
    return [int(fields[11]), int(fields[12])] + switches


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(name, seconds):
    port = free_port()
    argv = [a.replace("ADDR", f"127.0.0.1:{port}") for a in CONFIGS[name]]
    argv = [os.path.join(RELEASE, argv[0])] + [
        os.path.join(RELEASE, a) if a.startswith("examples/") else a for a in argv[1:]
    ]
    server = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise SystemExit(f"{name}: no answer on port {port}")
                time.sleep(0.02)
        time.sleep(0.3)
        pids = [server.pid] + children(server.pid)
        before = {p: sample(p) for p in pids}
        close = [] if os.environ.get("PROFILE_LOAD") == "keep-alive" else ["-H", "Connection: close"]
        out = subprocess.run(
            ["wrk", "-t1", "-c64", f"-d{seconds}s", *close, f"http://127.0.0.1:{port}/"],
            capture_output=True, text=True, timeout=seconds + 30,
        ).stdout
        after = {p: sample(p) for p in pids}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=15)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    per = [
        [(a - b) / requests for a, b in zip(after[p], before[p])] for p in pids
    ]
    to_us = 1e6 / HZ
    parent = per[0]
    kids = [statistics.mean(k[i] for k in per[1:]) for i in range(4)]
    print(
        f"{name:7} {rate:8.0f} req/s | parent user {parent[0] * to_us:5.1f} µs sys "
        f"{parent[1] * to_us:5.1f} µs, switches {parent[2]:.2f} + {parent[3]:.3f} | child (mean) "
        f"user {kids[0] * to_us:5.1f} µs sys {kids[1] * to_us:5.1f} µs, switches "
        f"{kids[2]:.2f} + {kids[3]:.3f}   (per request)",
        flush=True,
    )
    return rate


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    chosen = sys.argv[2:] or ["rr", "ref_c"]
    seconds = int(os.environ.get("PROFILE_SECS", "4"))
    rates = {name: [] for name in chosen}
    for _ in range(rounds):
        for name in chosen:
            rates[name].append(run(name, seconds))
    for name, values in rates.items():
        print(f"{name}: median {statistics.median(values):.0f} req/s")
    for ours, reference in (("rr", "ref_c"), ("shared", "ref_b")):
        if ours in rates and reference in rates:
            ratio = statistics.median(rates[ours]) / statistics.median(rates[reference])
            print(f"{ours} / {reference}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
