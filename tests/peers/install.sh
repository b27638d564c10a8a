#!/usr/bin/env bash
# The real peer programs the tests run under `cluster --listen` (uvicorn, gunicorn), h2load,
# logrotate, and the Prometheus project's parser the metrics test checks the exposition
# with, in a virtual environment under target/, never globally (h2load and logrotate from
# Debian's packages). Idempotent: a second run checks and
# returns. Node.js comes with the machine; Socket.IO comes from npm, under target/peers.
# CLUSTER_PEERS_PM2=1 also installs PM2 under target/peers (for target/release/reliability
# peer-restarts only, not the tests).
set -euo pipefail
cd "$(dirname "$0")/../.."
# h2load (the HTTP/2 load of the long-lived tests) comes from Debian's nghttp2-client;
# logrotate rotates the log file in the log tests; tmux is the terminal cluster top is tried in.
missing=""
command -v h2load >/dev/null || missing="$missing nghttp2-client"
command -v logrotate >/dev/null || [ -x /usr/sbin/logrotate ] || missing="$missing logrotate"
command -v tmux >/dev/null || missing="$missing tmux"
if [ -n "$missing" ]; then
    (apt-get update -qq && apt-get install -y -qq $missing) >/dev/null
fi
venv=target/peers/venv
stamp="$venv/.installed-3"
if [ ! -f "$stamp" ]; then
    python3 -m venv "$venv" || {
        # Debian keeps ensurepip in a package of its own.
        (apt-get update -qq && apt-get install -y -qq python3-venv) >/dev/null
        python3 -m venv "$venv"
    }
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        'uvicorn==0.34.*' 'gunicorn==23.*' 'prometheus-client==0.21.*' 'wsproto==1.2.*'
    touch "$stamp"
fi
# Socket.IO 4, the sticky-session test's server (an unmodified Node program).
if [ ! -d target/peers/node_modules/socket.io ]; then
    npm install --silent --prefix target/peers socket.io@4.8 >/dev/null
fi
# prom-client, the Node metrics peer (an unmodified server serving its own registry).
if [ ! -d target/peers/node_modules/prom-client ]; then
    npm install --silent --prefix target/peers prom-client@15 >/dev/null
fi
# The `ws` package: the permessage-deflate client of the hand-over test, and the WebSocket
# peer comparison (target/release/ws-peers).
if [ ! -d target/peers/node_modules/ws ]; then
    npm install --silent --prefix target/peers ws@8 >/dev/null
fi
if [ "${CLUSTER_PEERS_PM2:-0}" = 1 ] && [ ! -x target/peers/node_modules/.bin/pm2 ]; then
    npm install --silent --prefix target/peers pm2@5 >/dev/null
fi
