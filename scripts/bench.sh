#!/usr/bin/env bash
# The benchmark command: scripts/bench.sh [--quick] [bench options]
#
# Installs what the benchmarks need (nats-server, a MongoDB-wire server,
# wrk, Node.js with socket.io-client), starts the shared servers as the
# test script does, builds the release binaries and runs the `bench`
# package, which prints a Markdown table (see BENCHMARKS.md).
# `--quick` takes about two minutes; without it, about fifteen.
# `scripts/bench.sh --help` lists the options (e.g. --only e2e,fanout).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SERVERS_FOR=bench
# shellcheck source=scripts/servers.sh
source "$ROOT/scripts/servers.sh"

# The HTTP load generator (the bench falls back to a Rust client without it).
if ! command -v wrk >/dev/null 2>&1; then
    if is_root; then
        log "installing wrk (apt)"
        apt_install wrk || log "wrk not installed: the ingest scenario uses its Rust client"
    else
        log "wrk not found: the ingest scenario uses its Rust client"
    fi
fi
# Thousands of real Socket.IO clients run under Node.js.
if [ ! -d "$ROOT/bench/socketio/node_modules/socket.io-client" ]; then
    log "installing socket.io-client for the benchmark clients (npm ci)"
    (cd "$ROOT/bench/socketio" && npm ci --no-audit --no-fund --loglevel=error) \
        || die "npm ci failed in bench/socketio"
fi

log "cargo build --release --workspace --bins"
cargo build --release --workspace --bins
log "bench $*"
"$ROOT/target/release/bench" "$@"
