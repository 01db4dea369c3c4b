# Sourced by scripts/test.sh and scripts/bench.sh (not run on its own):
# installs what is missing and starts the servers the tests and benchmarks
# need (a NATS server with JetStream and a MongoDB-wire server), exports
# TEST_NATS_URL, TEST_MONGODB_URI, TEST_MONGODB_RS_URI (a replica set, where
# transactions run) and NATS_SERVER_BIN, and stops what it
# started when the calling script exits.
#
# Expects ROOT (the repository) to be set and the caller to run under
# `set -euo pipefail`. With SERVERS_FOR=bench the test-only tools (nginx,
# docker-compose) are not installed.

# Pinned so that a new release cannot change test behaviour unannounced.
NX27017_SPEC="nx-27017==0.8.1"
PYMONGO_SPEC="pymongo==4.20.1"
VENV="$ROOT/.test-env/venv"   # .test-env is gitignored

log() { echo "==> $*"; }
die() { echo "error: $*" >&2; exit 1; }
is_root() { [ "$(id -u)" -eq 0 ]; }

apt_updated=""
apt_install() {
    is_root || return 1
    if [ -z "$apt_updated" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=1
    fi
    # Install without starting the packages' own daemons (nginx on port 80,
    # a system nats-server): the tests start what they need themselves.
    local policy=/usr/sbin/policy-rc.d had_policy=""
    [ -e "$policy" ] && had_policy=1
    if [ -z "$had_policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod +x "$policy"
    fi
    local rc=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" || rc=$?
    [ -n "$had_policy" ] || rm -f "$policy"
    return "$rc"
}

# The private Python environment (.test-env/venv) for the MongoDB tools.
make_venv() {
    [ -x "$VENV/bin/pip" ] && return 0
    if ! python3 -m venv "$VENV" >"$TMP/venv.log" 2>&1; then
        # Debian's python3 lacks ensurepip unless python3-venv is installed.
        rm -rf "$VENV"
        is_root || { cat "$TMP/venv.log" >&2; die "python3 -m venv failed; install python3-venv"; }
        log "installing python3-venv (apt)"
        apt_install python3-venv || die "apt-get install python3-venv failed"
        python3 -m venv "$VENV" || die "python3 -m venv failed even with python3-venv"
    fi
}

# --- cleanup: stop whatever this script started -----------------------------
TMP="$(mktemp -d "${TMPDIR:-/tmp}/wa-test.XXXXXX")"
PIDS=()

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    # Give servers a few seconds to exit cleanly, then force them.
    for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
# Make Ctrl-C / kill go through the EXIT trap too.
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    # Ask the kernel for a free port; tiny race until the server binds it.
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_port NAME PORT PID LOGFILE...: poll until PORT accepts TCP (30 s max);
# on failure show the tail of the server's log files.
wait_port() {
    local name=$1 port=$2 pid=$3
    shift 3
    for _ in $(seq 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            log "$name is up on port $port"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "error: $name exited during startup; last log lines:" >&2
            tail -n 30 "$@" >&2 || true
            exit 1
        fi
        sleep 0.1
    done
    echo "error: $name did not accept connections on port $port within 30 s; last log lines:" >&2
    tail -n 30 "$@" >&2 || true
    exit 1
}

# --- 1. nats-server -----------------------------------------------------------
# Needed even with TEST_NATS_URL set: tests start private servers with it.
if [ -z "${NATS_SERVER_BIN:-}" ]; then
    # /usr/sbin is where Debian puts it, and may be off a non-root PATH.
    NATS_SERVER_BIN="$(command -v nats-server || true)"
    if [ -z "$NATS_SERVER_BIN" ] && [ -x /usr/sbin/nats-server ]; then
        NATS_SERVER_BIN=/usr/sbin/nats-server
    fi
    if [ -z "$NATS_SERVER_BIN" ]; then
        is_root || die "nats-server not found; install it (Debian: apt-get install nats-server) or set NATS_SERVER_BIN"
        log "installing nats-server (apt)"
        apt_install nats-server || die "apt-get install nats-server failed"
        NATS_SERVER_BIN="$(command -v nats-server || echo /usr/sbin/nats-server)"
    fi
fi
[ -x "$NATS_SERVER_BIN" ] || die "nats-server binary not executable: $NATS_SERVER_BIN"
export NATS_SERVER_BIN

# --- 1b. Node.js and the official socket.io-client ---------------------------
# The Socket.IO tests drive a real socket.io-client v4 under Node.js.
SIO_CLIENT="$ROOT/crates/test-support/socketio-client"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    is_root || die "node and npm not found; install Node.js (Debian: apt-get install nodejs npm)"
    log "installing nodejs and npm (apt)"
    apt_install nodejs npm || die "apt-get install nodejs npm failed"
fi
if [ ! -d "$SIO_CLIENT/node_modules/socket.io-client" ]; then
    log "installing socket.io-client (npm ci)"
    (cd "$SIO_CLIENT" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed in $SIO_CLIENT"
fi

# --- 1b2. the web inbox's tools: tsc, puppeteer-core and Debian's chromium ---
# web/package.json pins them (typescript for the lint step's type check,
# puppeteer-core for the browser tests); puppeteer-core downloads no
# browser: the tests drive Debian's chromium.
if [ "${SERVERS_FOR:-test}" != bench ]; then
    WEB="$ROOT/web"
    if [ ! -d "$WEB/node_modules/puppeteer-core" ] || [ ! -x "$WEB/node_modules/.bin/tsc" ]; then
        log "installing the web inbox's tools (npm ci in web/)"
        (cd "$WEB" && PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error) \
            || die "npm ci failed in $WEB"
    fi
    if [ -z "${CHROMIUM_BIN:-}" ]; then
        CHROMIUM_BIN="$(command -v chromium || true)"
        if [ -z "$CHROMIUM_BIN" ]; then
            is_root || die "chromium not found; install it (Debian: apt-get install chromium) or set CHROMIUM_BIN"
            log "installing chromium (apt)"
            apt_install chromium || die "apt-get install chromium failed"
            CHROMIUM_BIN="$(command -v chromium || echo /usr/bin/chromium)"
        fi
    fi
    export CHROMIUM_BIN
fi

# --- 1c. nginx (the edge proxy of deploy/) and docker-compose (to validate) --
# The local topology test runs Debian's nginx with deploy/nginx/; the
# compose file is checked with Debian's docker-compose (no engine needed).
need_apt=()
[ "${SERVERS_FOR:-test}" = bench ] || [ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || need_apt+=(nginx-light)
[ "${SERVERS_FOR:-test}" = bench ] || command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)
if [ ${#need_apt[@]} -gt 0 ]; then
    is_root || die "missing ${need_apt[*]}; install them (Debian: apt-get install ${need_apt[*]})"
    log "installing ${need_apt[*]} (apt)"
    apt_install "${need_apt[@]}" || die "apt-get install ${need_apt[*]} failed"
fi

# --- 2. MongoDB-wire server ---------------------------------------------------
MONGO_PORT=""
if [ -n "${TEST_MONGODB_URI:-}" ]; then
    log "using TEST_MONGODB_URI=$TEST_MONGODB_URI"
elif command -v mongod >/dev/null 2>&1; then
    MONGO_PORT="$(free_port)"
    mkdir -p "$TMP/mongo"
    log "starting mongod (single-node replica set rs0) on port $MONGO_PORT"
    # A replica set, not a standalone: the processor writes each batch in a
    # transaction, which MongoDB allows only on a replica set member.
    # Kept in the foreground of its own background job (no --fork) so that
    # we know its pid and can stop it.
    mongod --replSet rs0 --dbpath "$TMP/mongo" --port "$MONGO_PORT" --bind_ip 127.0.0.1 \
        --logpath "$TMP/mongo.log" </dev/null >/dev/null 2>&1 &
    PIDS+=("$!")
    MONGO_PID=$!
    MONGO_LOGS=("$TMP/mongo.log")
    wait_port "mongod" "$MONGO_PORT" "$MONGO_PID" "${MONGO_LOGS[@]}"
    # Initiate the set, with this member named 127.0.0.1:<port>: the very
    # address of TEST_MONGODB_URI (below), so the driver, which discovers the
    # set from that host alone, keeps using it. Then wait until it is PRIMARY.
    # With pymongo (PyPI) in the private virtualenv: not every MongoDB
    # install has mongosh.
    make_venv
    "$VENV/bin/python" -c 'import pymongo' 2>/dev/null \
        || "$VENV/bin/pip" install -q --disable-pip-version-check "$PYMONGO_SPEC" \
        || die "pip install $PYMONGO_SPEC failed"
    "$VENV/bin/python" - "$MONGO_PORT" <<'PY' || { tail -n 30 "${MONGO_LOGS[@]}" >&2 || true; die "could not make mongod on port $MONGO_PORT a replica set PRIMARY (see above)"; }
import sys, time
import pymongo
from pymongo.errors import OperationFailure

port = sys.argv[1]
client = pymongo.MongoClient(f"mongodb://127.0.0.1:{port}/?directConnection=true")
try:
    client.admin.command("replSetInitiate", {"_id": "rs0", "members": [{"_id": 0, "host": f"127.0.0.1:{port}"}]})
except OperationFailure as e:
    if e.code != 23:  # AlreadyInitialized
        raise
deadline = time.monotonic() + 30
while not client.admin.command("hello").get("isWritablePrimary"):
    if time.monotonic() > deadline:
        sys.exit("mongod did not become PRIMARY within 30 s")
    time.sleep(0.2)
print(f"==> mongod is the PRIMARY of replica set rs0 (member 127.0.0.1:{port})")
PY
else
    # No mongod (Debian does not package it): use nx-27017, a MongoDB wire
    # protocol server on SQLite, from PyPI in a private virtualenv.
    if [ ! -x "$VENV/bin/nx-27017" ]; then
        log "installing $NX27017_SPEC into .test-env/venv"
        make_venv
        "$VENV/bin/pip" install -q --disable-pip-version-check "$NX27017_SPEC" \
            || die "pip install $NX27017_SPEC failed"
    fi
    MONGO_PORT="$(free_port)"
    mkdir -p "$TMP/mongo"
    log "starting nx-27017 on port $MONGO_PORT"
    # Without -d it stays in the foreground: background it ourselves.
    "$VENV/bin/nx-27017" --data-dir "$TMP/mongo" --host 127.0.0.1 -p "$MONGO_PORT" \
        --log-file "$TMP/nx.log" --pid-file "$TMP/nx.pid" \
        </dev/null >"$TMP/nx.out" 2>&1 &
    PIDS+=("$!")
    MONGO_PID=$!
    MONGO_LOGS=("$TMP/nx.log" "$TMP/nx.out")
    # And a second one that answers as a one-member replica set, so that
    # the tests also run the production path: each batch one transaction.
    MONGO_RS_PORT="$(free_port)"
    mkdir -p "$TMP/mongo-rs"
    log "starting nx-27017 as replica set rs0 on port $MONGO_RS_PORT"
    "$VENV/bin/python" "$ROOT/scripts/nx-replica-set.py" --data-dir "$TMP/mongo-rs" \
        --host 127.0.0.1 -p "$MONGO_RS_PORT" --log-file "$TMP/nx-rs.log" --pid-file "$TMP/nx-rs.pid" \
        </dev/null >"$TMP/nx-rs.out" 2>&1 &
    PIDS+=("$!")
    MONGO_RS_PID=$!
fi

# --- 3. shared NATS server with JetStream -------------------------------------
NATS_PORT=""
if [ -n "${TEST_NATS_URL:-}" ]; then
    log "using TEST_NATS_URL=$TEST_NATS_URL"
else
    NATS_PORT="$(free_port)"
    log "starting nats-server on port $NATS_PORT"
    # Webhooks may be 3 MB: 8 MB keeps each in one message (the large-body
    # tests start their own server with the 1 MB default).
    cat >"$TMP/nats.conf" <<EOF
listen: 127.0.0.1:$NATS_PORT
max_payload: 8MB
jetstream { store_dir: "$TMP/nats" }
EOF
    "$NATS_SERVER_BIN" -c "$TMP/nats.conf" </dev/null >"$TMP/nats.log" 2>&1 &
    PIDS+=("$!")
    NATS_PID=$!
fi

# --- 4. wait until both accept connections -------------------------------------
if [ -n "$MONGO_PORT" ]; then
    wait_port "MongoDB server" "$MONGO_PORT" "$MONGO_PID" "${MONGO_LOGS[@]}"
    export TEST_MONGODB_URI="mongodb://127.0.0.1:$MONGO_PORT"
fi
# Tests of the transactional path use TEST_MONGODB_RS_URI: the replica-set
# stand-in, or the same server when that is a replica set already (mongod
# above) or was given.
if [ -n "${MONGO_RS_PORT:-}" ]; then
    wait_port "MongoDB replica-set stand-in" "$MONGO_RS_PORT" "$MONGO_RS_PID" "$TMP/nx-rs.log" "$TMP/nx-rs.out"
    export TEST_MONGODB_RS_URI="mongodb://127.0.0.1:$MONGO_RS_PORT"
else
    export TEST_MONGODB_RS_URI="${TEST_MONGODB_RS_URI:-$TEST_MONGODB_URI}"
fi
if [ -n "$NATS_PORT" ]; then
    wait_port "nats-server" "$NATS_PORT" "$NATS_PID" "$TMP/nats.log"
    export TEST_NATS_URL="nats://127.0.0.1:$NATS_PORT"
fi
