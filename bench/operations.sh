#!/usr/bin/env bash
# Operations under load, measured with the release build and real clients (wrk, curl), on
# 127.0.0.1 only, each part bounded and stopping what it started:
#   reload    cluster reload (env + worker count) under wrk keep-alive and new-connection
#             load; a bad reload rolled back (a worker that gives up 0.5 s after ready, and
#             one that crashes outright); cluster check's time
#   affinity  keep-alive throughput with --cpu-affinity auto against the same run without
#   logs      a log flood with --log-max-size/--log-keep: the most disk used, lines dropped
#   scrape    /metrics latency with 32 programs serving their own metrics, one of which never
#             answers
#   top       the watcher's CPU with `cluster top --json` watching 64 workers, and without
# Usage: bench/operations.sh [PART...]   (all parts when none is given)
# Needs: cargo build --release -p cluster-cli -p cluster-examples --bins --examples; wrk;
# tests/peers/install.sh (uvicorn and prometheus_client for `scrape`).
set -euo pipefail
cd "$(dirname "$0")/.."
cluster=$PWD/target/release/cluster
hello=$PWD/target/release/examples/hello-http
work=$(mktemp -d /tmp/cluster-operations.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    sleep 1
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits for "all workers ready" in a log.
ready() { for _ in $(seq 200); do grep -q "all workers ready" "$1" && return 0; sleep 0.1; done; echo "not ready: $1" >&2; return 1; }

# wrk's failures: socket errors and non-2xx responses, summed.
failures() {
    awk '/Socket errors/ { gsub(",", ""); n += $4 + $6 + $8 + $10 } /Non-2xx/ { n += $5 } END { print n + 0 }' "$1"
}
requests() { awk '/requests in/ { print $1 }' "$1"; }

config() { # $1 file, $2 port, $3 workers, $4.. env lines
    local file=$1 port=$2 workers=$3; shift 3
    printf 'program = "%s"\nargs = ["127.0.0.1:%s"]\nworkers = %s\ncontrol = "%s/control.sock"\nmin-uptime = "1s"\n[env]\n' \
        "$hello" "$port" "$workers" "$work" > "$file"
    for line in "$@"; do echo "$line" >> "$file"; done
}

part_reload() {
    local port; port=$(free_port)
    local file=$work/cluster.toml
    config "$file" "$port" 2 'APP_VERSION = "blue"'
    "$cluster" -c "$file" > "$work/reload.log" 2>&1 & pids+=($!)
    ready "$work/reload.log"
    for mode in keep-alive new-connection; do
        local header=() connections=32
        [ $mode = new-connection ] && header=(-H "Connection: close") && connections=8
        wrk -t2 -c$connections -d12s "${header[@]}" "http://127.0.0.1:$port/" > "$work/wrk.txt" &
        local load=$!
        sleep 3; config "$file" "$port" 3 'APP_VERSION = "green"'
        "$cluster" reload --control "$work/control.sock" > /dev/null
        sleep 3; config "$file" "$port" 2 'APP_VERSION = "blue"'
        "$cluster" reload --control "$work/control.sock" > /dev/null
        wait $load
        echo "reload ($mode, 2 reloads: env and 2->3->2 workers): $(requests "$work/wrk.txt") requests, $(failures "$work/wrk.txt") failed"
    done
    for failing in HELLO_FAIL_AFTER_MS HELLO_CRASH_AFTER_MS; do
        wrk -t2 -c32 -d8s "http://127.0.0.1:$port/" > "$work/wrk.txt" &
        local load=$!
        sleep 2; config "$file" "$port" 2 'APP_VERSION = "green"' "$failing = \"500\""
        local started; started=$(date +%s.%N)
        local code=0; "$cluster" reload --control "$work/control.sock" > /dev/null 2>&1 || code=$?
        local took; took=$(echo "$(date +%s.%N) - $started" | bc)
        config "$file" "$port" 2 'APP_VERSION = "blue"'
        wait $load
        echo "rollback ($failing=500): reload exit $code after ${took:0:4} s; $(requests "$work/wrk.txt") requests, $(failures "$work/wrk.txt") failed"
    done
    # The complete shipped file, with a program that exists and without its cwd and env file.
    local full=$work/complete.toml
    sed -e "s|^program = .*|program = \"$hello\"|" -e '/^cwd = /d' -e '/^env-file = /d' \
        contrib/cluster.toml > "$full"
    "$cluster" check -c "$full" > /dev/null || echo "cluster check refused $full"
    local start; start=$(date +%s%N)
    for _ in $(seq 20); do "$cluster" check -c "$full" > /dev/null; done
    echo "cluster check (contrib/cluster.toml, $(grep -c ' = ' "$full") keys): $(( ($(date +%s%N) - start) / 20000000 )) ms a run (20 runs)"
    "$cluster" stop --control "$work/control.sock" > /dev/null
}

part_affinity() {
    for round in 1 2 3; do
        for pinned in no yes; do
            local port; port=$(free_port)
            local flag=(); [ $pinned = yes ] && flag=(--cpu-affinity auto)
            "$cluster" -w 2 "${flag[@]}" --control "$work/aff.sock" "$hello" "127.0.0.1:$port" > "$work/aff.log" 2>&1 & local pid=$!
            ready "$work/aff.log"
            wrk -t2 -c32 -d5s "http://127.0.0.1:$port/" | awk -v p=$pinned -v r=$round '/Requests\/sec/ { print "affinity round " r " pinned=" p ": " $2 " requests/s" }'
            kill -TERM $pid; wait $pid || true
        done
    done
}

# Heartbeat ages of the workers, sampled from the control socket every 100 ms for $2
# samples: their p50 and p99 (a supervision thread kept waiting shows as ages past the
# 1 s interval).
heartbeat_ages() { # $1 control socket, $2 samples
    local samples=$work/heartbeats; rm -rf "$samples"; mkdir -p "$samples"
    for i in $(seq "$2"); do
        "$cluster" status --json --control "$1" > "$samples/$i.json" 2>/dev/null
        sleep 0.1
    done
    python3 -c '
import glob, json, sys
ages = sorted(w["heartbeat_age"] for name in glob.glob(sys.argv[1] + "/*.json")
              for s in json.load(open(name))["slots"] for w in s["workers"]
              if w.get("heartbeat_age") is not None)
print(f"heartbeat age p50 {ages[len(ages)//2]*1000:.0f} ms, p99 {ages[int(len(ages)*0.99)]*1000:.0f} ms ({len(ages)} samples)")' "$samples"
}

part_logs() {
    local log=$work/flood/cluster.log; mkdir -p "$work/flood"
    local chatty; chatty=$(ls target/release/cli-worker 2>/dev/null || ls target/debug/cli-worker)
    # The same cluster without the flood first: the heartbeat ages to compare with.
    "$cluster" -w 2 --log-file "$work/quiet.log" --log-format json \
        --control "$work/quiet.sock" "$chatty" chatty 127.0.0.1:0 "$work/quiet.port" 0 > /dev/null 2>&1 & local quiet=$!
    sleep 2; echo "no flood: $(heartbeat_ages "$work/quiet.sock" 100)"
    kill -TERM $quiet; wait $quiet || true
    local began; began=$(date +%s.%N)
    "$cluster" -w 2 --log-file "$log" --log-format json --log-max-size 50M --log-keep 3 \
        --control "$work/flood.sock" "$chatty" chatty 127.0.0.1:0 "$work/flood/port" 60 > /dev/null 2>&1 & local pid=$!
    sleep 2; echo "flood: $(heartbeat_ages "$work/flood.sock" 100)"
    local most=0
    for _ in $(seq 180); do
        local used; used=$(du -sb "$work/flood" | cut -f1)
        [ "$used" -gt "$most" ] && most=$used
        sleep 0.1
    done
    local dropped; dropped=$("$cluster" status --json --control "$work/flood.sock" | python3 -c 'import json,sys; print(json.load(sys.stdin)["log_lines_dropped"])')
    kill -TERM $pid; wait $pid || true
    local took; took=$(echo "$(date +%s.%N) - $began" | bc)
    local written; written=$(cat "$work/flood"/cluster.log* | wc -c)
    echo "log flood (2 workers x 60 lines/ms for ${took%.*} s, --log-max-size 50M --log-keep 3): at most $((most / 1048576)) MiB ($((most / 1000000)) MB) on disk, $((written / 1048576)) MiB kept, $dropped lines dropped"
    local kept=(); for n in 3 2 1; do [ -f "$log.$n" ] && kept+=("$log.$n"); done
    python3 bench/peers/check_log_lines.py "$took" "${kept[@]}" "$log"
}

part_scrape() {
    local python=target/peers/venv/bin/python
    local port metrics; port=$(free_port); metrics=$(free_port)
    "$cluster" -w 32 --metrics "127.0.0.1:$metrics" --listen "127.0.0.1:$port" --ready-after 2s \
        "$python" bench/peers/metrics_probe.py > "$work/scrape.log" 2>&1 & local pid=$!
    ready "$work/scrape.log"; sleep 2
    for _ in $(seq 200); do
        curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$metrics/metrics"
    done | sort -n | awk '{ t[NR] = $1 } END { printf "scrape with 32 program workers (one never answers): p50 %.1f ms, p99 %.1f ms\n", t[int(NR*0.5)]*1000, t[int(NR*0.99)]*1000 }'
    curl -s "http://127.0.0.1:$metrics/metrics" | grep -c '^probe_requests_total{worker="[0-9]' | sed 's/^/workers with series: /'
    kill -TERM $pid; wait $pid || true
}

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

part_top() {
    local port; port=$(free_port)
    "$cluster" -w 64 --control "$work/top.sock" "$hello" "127.0.0.1:$port" > "$work/top.log" 2>&1 & local pid=$!
    ready "$work/top.log"; sleep 2
    local hz; hz=$(getconf CLK_TCK)
    local before; before=$(cpu_ticks $pid); sleep 20
    local idle=$(( $(cpu_ticks $pid) - before ))
    "$cluster" top --json --control "$work/top.sock" > /dev/null & local top=$!
    before=$(cpu_ticks $pid); sleep 20
    local watched=$(( $(cpu_ticks $pid) - before ))
    kill $top; kill -TERM $pid; wait $pid || true
    echo "watcher CPU with 64 workers over 20 s: $(echo "scale=2; $idle * 100 / $hz / 20" | bc) % of a core alone, $(echo "scale=2; $watched * 100 / $hz / 20" | bc) % with cluster top --json watching"
}

parts=("$@"); [ ${#parts[@]} -eq 0 ] && parts=(reload affinity logs scrape top)
for part in "${parts[@]}"; do "part_$part"; done
