#!/usr/bin/env bash
# Installs the package built by build.sh, checks what an operator would (the binary runs,
# `man cluster` finds its page, every shipped unit passes `systemd-analyze verify` with no
# warning at all: it exits 0 on some), then removes and purges it and checks nothing is left.
set -euo pipefail
cd "$(dirname "$0")/../.."
deb=$(ls target/debian/cluster_*.deb | tail -1)
command -v man >/dev/null || { apt-get update -qq && apt-get install -y -qq man-db >/dev/null; }
dpkg -i "$deb" >/dev/null
trap 'dpkg -P cluster >/dev/null 2>&1 || true' EXIT
fail() { echo "deb: $*" >&2; exit 1; }
[ "$(/usr/bin/cluster --version)" = "cluster $(dpkg-deb -f "$deb" Version | cut -d- -f1)" ] \
    || fail "cluster --version does not say the package's version"
man -w cluster | grep -q '^/usr/share/man/man1/cluster.1.gz$' || fail "man -w cluster"
bash -n /usr/share/bash-completion/completions/cluster || fail "the bash completion"
examples=/usr/share/doc/cluster/examples/systemd
for units in "cluster@shop.service" "$examples/cluster-app.socket $examples/cluster-app.service"; do
    # shellcheck disable=SC2086 # two units verified together: the service requires the socket
    said=$(cd /tmp && systemd-analyze verify $units 2>&1) || fail "systemd-analyze verify $units: $said"
    [ -z "$said" ] || fail "systemd-analyze verify $units warns: $said"
done
dpkg -r cluster >/dev/null
[ ! -e /usr/bin/cluster ] || fail "the binary stayed after dpkg -r"
[ -e /etc/cluster/README ] || fail "dpkg -r removed a configuration file"
dpkg -P cluster >/dev/null
[ ! -e /etc/cluster ] || fail "/etc/cluster stayed after dpkg -P"
echo "deb: $deb installs, runs, has its man page, its units verify, and removes cleanly"
