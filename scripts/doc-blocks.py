#!/usr/bin/env python3
"""Runs the documentation's runnable blocks, as a newcomer would paste them.

A block a reader is told to run is marked in the Markdown by a comment on
the line above its fence:

    <!-- doc-test: NAME -->
    ```sh
    ...
    ```

This script finds every marked block in README.md, CONTRIBUTING.md and
docs/*.md and runs the ones that need no Docker, Kubernetes or Meta, in the
order a reader meets them:

  all-in-one         quickstart-serve (the README's first command) in the
                     background, until the samples are stored; then
                     frontend-curl (three curls) and frontend-socket (the
                     socket.io-client snippet, which must replay the
                     message the curls sent) against it.
  services-yourself  docs/operations.md's snippet: nats-server, the three
                     services, and the importer signing its posts for the
                     gateway that checks them; the samples must be stored.

It fails when a block fails, when a block it runs is no longer marked, or
when a marked block is unknown to it; it also checks that the relative
links between the Markdown files, and their #anchors, exist.

The blocks run verbatim, in a scratch directory outside the repository
(so that no .env of the checkout applies) with a clean environment, against
the binaries scripts/test.sh has built: `cargo build` is a no-op there,
`cargo run --release --bin X -- ARGS` runs target/debug/X ARGS, and
target/release is target/debug. The blocks use their documented ports
(3000-3002, NATS 4222): those must be free.

Environment: NATS_SERVER_BIN (nats-server, else from the PATH),
TEST_MONGODB_URI (a MongoDB for the services, no database path),
SIO_CLIENT_DIR (a folder whose node_modules has socket.io-client).
Usage: scripts/doc-blocks.py [--list] [--only all-in-one|services-yourself|links]
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "target" / "debug"
MARK = re.compile(
    r"^<!--\s*doc-test:\s*([\w-]+)\s*-->\s*\n```(\w+)\n(.*?)\n```", re.M | re.S
)
# Every block this script runs, by scenario.
SCENARIOS = {
    "all-in-one": ["quickstart-serve", "frontend-curl", "frontend-socket"],
    "services-yourself": ["services-yourself"],
}
BINARIES = ["whatsapp-clone", "webhook-gateway", "processor", "api-gateway"]
CARGO_SHIM = """#!/usr/bin/env bash
# doc-blocks.py: the binaries are built (scripts/test.sh); `cargo run` runs them.
case "$1" in
  build) exit 0 ;;
  run)
    shift; bin=""
    while [ $# -gt 0 ]; do
      case "$1" in
        --release) shift ;;
        --bin) bin="$2"; shift 2 ;;
        --) shift; break ;;
        *) echo "doc-blocks cargo shim: unexpected argument $1" >&2; exit 2 ;;
      esac
    done
    exec "$DOC_BLOCKS_TARGET/$bin" "$@" ;;
  *) echo "doc-blocks cargo shim: cargo $* is not supported" >&2; exit 2 ;;
esac
"""


def log(message):
    print(f"==> doc-blocks: {message}", flush=True)


class Failure(Exception):
    pass


def markdown_files():
    files = [ROOT / "README.md", ROOT / "CONTRIBUTING.md"]
    files += sorted((ROOT / "docs").glob("*.md"))
    return [f for f in files if f.exists()]


def marked_blocks():
    blocks = {}
    for path in markdown_files():
        for match in MARK.finditer(path.read_text()):
            name, lang, code = match.groups()
            if name in blocks:
                raise Failure(f"block {name} is marked twice ({blocks[name][0]} and {path})")
            blocks[name] = (path.relative_to(ROOT), lang, code)
    return blocks


# --- links ---------------------------------------------------------------------
def slug(heading):
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]|<[^>]+>", "", heading.strip()).lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = "".join(c for c in text if c.isalnum() or c in " -")
    return text.replace(" ", "-")


def anchors(path):
    seen, out = {}, set()
    in_fence = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        if in_fence or not line.startswith("#"):
            continue
        base = slug(line.lstrip("#"))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def check_links():
    problems = []
    for path in markdown_files() + [ROOT / "deploy" / "README.md"]:
        text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            if not dest.exists():
                problems.append(f"{path.relative_to(ROOT)}: {target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{path.relative_to(ROOT)}: {target}: no such heading")
    if problems:
        raise Failure("broken links:\n  " + "\n  ".join(problems))
    log("links between the Markdown files and their anchors exist")


# --- running blocks -------------------------------------------------------------
def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def get_json(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def wait_for(what, condition, timeout, logs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise Failure(f"timed out after {timeout} s waiting for {what}" + dump(logs))


def dump(logs):
    out = ""
    for path in logs:
        if Path(path).exists():
            tail = Path(path).read_text(errors="replace").splitlines()[-40:]
            out += f"\n--- {path} (last lines)\n" + "\n".join(tail)
    return out


def expected_messages():
    expected = json.loads((ROOT / "webhook_files" / "EXPECTED.json").read_text())
    return len({m["messageId"] for f in expected for m in f["messages"]})


class Sandbox:
    """A scratch directory with the samples, the shim and a clean environment."""

    def __init__(self, name, extra_env=None):
        self.dir = Path(tempfile.mkdtemp(prefix=f"doc-blocks-{name}-", dir="/tmp"))
        (self.dir / "webhook_files").symlink_to(ROOT / "webhook_files")
        (self.dir / "target").mkdir()
        (self.dir / "target" / "release").symlink_to(TARGET)
        shim = self.dir / ".shim"
        shim.mkdir()
        (shim / "cargo").write_text(CARGO_SHIM)
        (shim / "cargo").chmod(0o755)
        path = [str(shim)]
        nats = os.environ.get("NATS_SERVER_BIN") or shutil.which("nats-server")
        if nats:
            path.append(str(Path(nats).parent))
        path.append(os.environ.get("PATH", "/usr/bin:/bin"))
        self.env = {
            "PATH": ":".join(path),
            "HOME": os.environ.get("HOME", str(self.dir)),
            "LANG": "C.UTF-8",
            "RUST_LOG": "warn",
            "DOC_BLOCKS_TARGET": str(TARGET),
        }
        self.env.update(extra_env or {})
        self.running = []

    def start(self, name, code):
        """A block that runs until stopped (a server), in its own process group."""
        log_path = self.dir / f"{name}.log"
        process = subprocess.Popen(
            ["bash", "-c", code], cwd=self.dir, env=self.env,
            stdout=open(log_path, "w"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.running.append(process)
        return process, log_path

    def run(self, name, code, timeout=120):
        """A block that finishes: every command must succeed."""
        log_path = self.dir / f"{name}.log"
        process = subprocess.Popen(
            ["bash", "-eo", "pipefail", "-c", code], cwd=self.dir, env=self.env,
            stdout=open(log_path, "w"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.running.append(process)
        try:
            rc = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Failure(f"block {name} did not finish within {timeout} s" + dump([log_path]))
        if rc != 0:
            raise Failure(f"block {name} failed (exit {rc})" + dump([log_path]))
        return log_path.read_text(errors="replace")

    def stop(self):
        """Stops every process group this sandbox started (its servers and
        whatever their blocks put in the background)."""
        for process in self.running:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for process in self.running:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                process.poll()  # reaps the leader: a zombie still counts in its group
                try:
                    os.killpg(process.pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            process.wait()

    def close(self, keep):
        self.stop()
        if keep:
            log(f"logs kept in {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def need_ports(ports):
    busy = [p for p in ports if not port_free(p)]
    if busy:
        raise Failure(f"the documented ports {busy} are in use; the blocks need them free")


def sio_client_dir():
    candidates = [os.environ.get("SIO_CLIENT_DIR", "")]
    candidates += [str(ROOT / "crates" / "test-support" / "socketio-client")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "node_modules" / "socket.io-client").is_dir():
            return Path(candidate)
    raise Failure("socket.io-client is not installed (scripts/test.sh installs it with npm ci)")


def all_in_one(blocks):
    need_ports([3000])
    box = Sandbox("all-in-one")
    ok = False
    try:
        _, server_log = box.start("quickstart-serve", blocks["quickstart-serve"][2])
        expected = expected_messages()
        wait_for(
            f"the quickstart to serve and store the {expected} sample messages",
            lambda: get_json("http://127.0.0.1:3000/api/stats")["totalMessages"] >= expected,
            120, [server_log],
        )
        log(f"quickstart-serve: serving, {expected} sample messages stored")
        out = box.run("frontend-curl", blocks["frontend-curl"][2])
        if "Hello from the README" not in out or "conv_919937320320" not in out:
            raise Failure("frontend-curl: the answers lack the conversation or the sent message:\n" + out)
        log("frontend-curl: three curls answered")

        # The snippet, as a module next to socket.io-client's node_modules.
        node_dir = box.dir / "socket"
        node_dir.mkdir()
        (node_dir / "node_modules").symlink_to(sio_client_dir() / "node_modules")
        (node_dir / "client.mjs").write_text(blocks["frontend-socket"][2] + "\n")
        socket_log = box.dir / "frontend-socket.log"
        node = subprocess.Popen(
            ["node", "client.mjs"], cwd=node_dir, env=box.env,
            stdout=open(socket_log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        box.running.append(node)
        wanted = "newMessage conv_919937320320 Hello from the README"
        wait_for(
            "the socket snippet to replay the message the curls sent (lastSeq: 0)",
            lambda: wanted in socket_log.read_text(errors="replace"), 30, [socket_log],
        )
        text = socket_log.read_text(errors="replace")
        if "connect_error" in text:
            raise Failure("frontend-socket: " + text)
        log(f"frontend-socket: {text.count('newMessage')} newMessage events, the README's among them")
        ok = True
    finally:
        box.close(keep=not ok)


def services_yourself(blocks):
    need_ports([3000, 3001, 3002, 4222])
    mongo = os.environ.get("TEST_MONGODB_URI")
    if not mongo:
        raise Failure("TEST_MONGODB_URI is not set (scripts/test.sh starts a MongoDB-wire server)")
    base, _, query = mongo.partition("?")
    database = f"doc_blocks_{os.getpid()}"
    uri = f"{base.rstrip('/')}/{database}" + (f"?{query}" if query else "")
    # Fresh streams each run: the same samples within 10 minutes would
    # otherwise be duplicates of the last run's.
    box = Sandbox("services", {"MONGODB_URI": uri, "NATS_NAMESPACE": f"docblocks{os.getpid()}"})
    ok = False
    try:
        out = box.run("services-yourself", blocks["services-yourself"][2], timeout=180)
        if "0 failed" not in out:
            raise Failure("services-yourself: the import did not take every file:\n" + out)
        expected = expected_messages()
        wait_for(
            f"the processor to store the {expected} sample messages",
            lambda: get_json("http://127.0.0.1:3000/api/stats")["totalMessages"] >= expected,
            120, [box.dir / "services-yourself.log"],
        )
        log(f"services-yourself: NATS, the three services, a signed import, {expected} messages stored")
        ok = True
    finally:
        box.close(keep=not ok)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--list", action="store_true", help="list the marked blocks")
    parser.add_argument("--only", choices=[*SCENARIOS, "links"], action="append")
    args = parser.parse_args()
    try:
        blocks = marked_blocks()
        if args.list:
            for name, (path, lang, _) in blocks.items():
                print(f"{name}\t{lang}\t{path}")
            return 0
        known = {name for names in SCENARIOS.values() for name in names}
        if unknown := set(blocks) - known:
            raise Failure(f"marked blocks this script does not run: {sorted(unknown)}")
        if missing := known - set(blocks):
            raise Failure(f"blocks no longer marked in the docs: {sorted(missing)}")
        missing_bins = [b for b in BINARIES if not (TARGET / b).exists()]
        only = args.only or [*SCENARIOS, "links"]
        if missing_bins and set(only) - {"links"}:
            raise Failure(f"build the binaries first (cargo build --bins): missing {missing_bins}")
        started = time.monotonic()
        if "links" in only:
            check_links()
        if "all-in-one" in only:
            all_in_one(blocks)
        if "services-yourself" in only:
            services_yourself(blocks)
        log(f"passed in {time.monotonic() - started:.1f} s")
        return 0
    except Failure as failure:
        print(f"error: doc-blocks: {failure}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
