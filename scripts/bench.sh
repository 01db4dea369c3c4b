#!/usr/bin/env bash
# The benchmark command: scripts/bench.sh [--quick] [bench options]
#
# Installs what the benchmarks need (nats-server, a MongoDB-wire server,
# wrk, Node.js with socket.io-client), starts the shared servers as the
# test script does, builds the release binaries and runs the `bench`
# package, which prints a Markdown table (see BENCHMARKS.md).
# `--quick` takes a few minutes; without it, about 45 on the MongoDB stand-in.
# `scripts/bench.sh --help` lists the options (e.g. --only e2e,fanout).
#
# MongoDB: the scenarios use the replica set (TEST_MONGODB_RS_URI: mongod
# started as a one-member replica set, or the stand-in nx-27017 announcing
# itself as one, see scripts/nx-replica-set.py), as compose and k8s run
# MongoDB: each batch is one transaction with majority, journaled writes.
# `--mongo standalone` uses TEST_MONGODB_URI instead (the stand-in as a
# standalone server: the fallback path without transactions).
#
# The release binaries go to $CARGO_TARGET_DIR (default target/).
#
# The stored-rate scenario (`--only stored`: messages/s the stack stores
# under webhook load, empty and preloaded database, all-in-one, crash
# recovery) can put another revision's build next to the working tree's:
#   scripts/bench.sh --only stored --baseline-rev fa7cf9c
# `--baseline-rev REV` builds REV's webhook-gateway, processor and
# whatsapp-clone (release) in a git worktree `target/baseline/<commit>`
# (`git worktree add --detach`; reused when present) with its own target
# directory `target/baseline-target`, and passes `--baseline-rev REV
# --baseline-bin-dir target/baseline-target/release` to the bench. The
# working tree itself is not touched. `--stored-preload N` sets the
# preloaded data size (default 100000; 20000 with --quick). While the stack
# cannot keep up, each of its rows waits up to 60 s (full: 120 s) for the
# backlog and a preload gives up after 5 min (full: 20 min): `--only stored`
# takes 4-10 minutes in quick mode; the first baseline build about 10.
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

# --baseline-rev REV (or --baseline-rev=REV): build that revision too.
BASELINE_REV=""
prev=""
for arg in "$@"; do
    [ "$prev" = --baseline-rev ] && BASELINE_REV="$arg"
    case "$arg" in --baseline-rev=*) BASELINE_REV="${arg#*=}" ;; esac
    prev="$arg"
done
extra=()
if [ -n "$BASELINE_REV" ]; then
    commit="$(git rev-parse --verify --quiet "$BASELINE_REV^{commit}")" \
        || die "--baseline-rev $BASELINE_REV: not a commit of this repository"
    worktree="$ROOT/target/baseline/$(git rev-parse --short "$commit")"
    if [ "$(git -C "$worktree" rev-parse HEAD 2>/dev/null || true)" = "$commit" ]; then
        log "reusing the baseline worktree $worktree"
    else
        # A leftover of an interrupted run, or another commit: replace it.
        git worktree remove --force "$worktree" 2>/dev/null || rm -rf "$worktree"
        mkdir -p "$ROOT/target/baseline"
        log "git worktree add --detach $worktree $commit"
        # --force: the path may still be registered if its directory was deleted.
        git worktree add --force --detach --quiet "$worktree" "$commit"
    fi
    log "cargo build --release (baseline $BASELINE_REV: webhook-gateway, processor, whatsapp-clone)"
    (cd "$worktree" && CARGO_TARGET_DIR="$ROOT/target/baseline-target" \
        cargo build --release --bin webhook-gateway --bin processor --bin whatsapp-clone)
    extra=(--baseline-bin-dir "$ROOT/target/baseline-target/release")
fi

log "cargo build --release --workspace --bins"
cargo build --release --workspace --bins
log "MongoDB: replica set $TEST_MONGODB_RS_URI, standalone $TEST_MONGODB_URI (bench --mongo chooses; default replica set)"
log "bench $* ${extra[*]}"
"${CARGO_TARGET_DIR:-$ROOT/target}/release/bench" "$@" "${extra[@]+"${extra[@]}"}"
