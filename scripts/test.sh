#!/usr/bin/env bash
# The project's one test command: scripts/test.sh [extra cargo test args]
#
# Starts the services the tests need (a NATS server with JetStream and a
# MongoDB-wire server), exports their addresses, runs fmt + clippy + the
# workspace tests, and stops everything it started on exit.
#
# Environment:
#   TEST_NATS_URL     use this NATS server instead of starting one
#   TEST_MONGODB_URI  use this MongoDB server instead of starting one
#                     (no database path: tests append their own names)
#   NATS_SERVER_BIN   nats-server binary (found or installed if unset);
#                     tests start private servers with it to simulate outages
#   SKIP_LINT=1       skip cargo fmt --check and cargo clippy
set -euo pipefail

# Run from the repo root whatever the caller's working directory.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SERVERS_FOR=test  # everything the tests need, whatever the environment says
# shellcheck source=scripts/servers.sh
source "$ROOT/scripts/servers.sh"

# --- 5. lint and test ---------------------------------------------------------
log "TEST_NATS_URL=$TEST_NATS_URL TEST_MONGODB_URI=$TEST_MONGODB_URI NATS_SERVER_BIN=$NATS_SERVER_BIN"
if [ "${SKIP_LINT:-0}" != "1" ]; then
    log "cargo fmt --all -- --check"
    cargo fmt --all -- --check
    log "cargo clippy --workspace --all-targets -- -D warnings"
    cargo clippy --workspace --all-targets -- -D warnings
else
    log "SKIP_LINT=1: skipping fmt and clippy"
fi
log "docker-compose config -q (the stack and the all-in-one profile)"
docker-compose -f docker-compose.yml config -q
docker-compose -f docker-compose.yml --profile all-in-one config -q
# The local topology test runs the service binaries themselves.
log "cargo build --workspace --bins"
cargo build --workspace --bins
log "cargo test --workspace $*"
cargo test --workspace "$@"
