#!/usr/bin/env bash
# Property-based test of the admin API against its own OpenAPI document, with schemathesis.
#
# Usage:
#   pip install schemathesis            # once (PyPI)
#   scripts/schemathesis.sh [MAX_EXAMPLES] [-- extra schemathesis args]
#
#   MAX_EXAMPLES   examples per operation (default 100)
#
# What it does: builds `iac` (honours CARGO_TARGET_DIR), makes a throw-away project directory
# with an isolated config, starts a stand-in Supabase (a tiny local HTTP server: JWKS with no
# keys, every other call 401 — the bearer used is the opaque `sb_secret_` service key, which the
# verifier checks locally), starts `iac serve --http 127.0.0.1:<free port>` and runs
# `schemathesis run http://127.0.0.1:<port>/openapi.json` with a valid bearer token and every
# check enabled. Everything it starts is stopped on exit, and the temp directory removed.
#
# Nothing reaches Docker or the network: `[docker] docker_host` points at a stand-in engine (a
# tiny local server on a Unix socket that answers ping/version/image inspect and lists no
# containers or networks, and refuses everything else with 500, so nothing is ever created);
# every outbound fetch goes to a dead proxy and dead forge hosts (127.0.0.1:9), so remote slugs
# fail in milliseconds; `path:`/`git+file:` slugs are refused by the API's slug policy
# (`[serve] allow_local_sources` is off). The exit code is schemathesis's.
set -euo pipefail

max_examples="${1:-100}"
shift || true
[ "${1:-}" = "--" ] && shift

root="$(cd "$(dirname "$0")/.." && pwd)"
command -v schemathesis >/dev/null || {
  echo "schemathesis is not installed: pip install schemathesis" >&2
  exit 2
}

target="${CARGO_TARGET_DIR:-$root/target}"
(cd "$root" && cargo build -q -p iac-bin --bin iac)
iac="$target/debug/iac"

work="$(mktemp -d -t iac-schemathesis.XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# --- stand-in Supabase ---
sb_port="$(free_port)"
cat >"$work/supabase.py" <<'EOF'
"""Stand-in Supabase for the schemathesis run: an empty JWKS, 401 for everything else."""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/auth/v1/.well-known/jwks.json":
            self._send(200, {"keys": []})
        else:
            self._send(401, {"msg": "invalid JWT"})

    do_POST = do_GET

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
EOF
python3 "$work/supabase.py" "$sb_port" &
pids+=($!)

# --- stand-in Docker engine (creates nothing) ---
cat >"$work/engine.py" <<'EOF'
"""Stand-in Docker engine for the schemathesis run: enough for iac to connect, resolve its
images and list (no) containers; every other call is refused, so nothing is ever created."""
import json
import os
import re
import socketserver
import sys
from http.server import BaseHTTPRequestHandler


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, status, body, ctype="application/json"):
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("api-version", "1.41")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _route(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        path = re.sub(r"^/v[0-9.]+", "", self.path.split("?", 1)[0])
        if path == "/_ping":
            return self._send(200, "OK", "text/plain")
        if self.command == "GET" and path == "/version":
            return self._send(200, {"Version": "20.10.0-standin", "ApiVersion": "1.41",
                                    "MinAPIVersion": "1.12", "Os": "linux", "Arch": "amd64"})
        m = re.fullmatch(r"/images/(.+)/json", path)
        if self.command == "GET" and m:
            return self._send(200, {"Id": "sha256:" + "0" * 64, "RepoTags": [m.group(1)]})
        if self.command == "GET" and path in ("/containers/json", "/networks"):
            return self._send(200, [])
        self._send(500, {"message": f"stand-in engine: {self.command} {path} is not supported (it creates nothing)"})

    do_GET = do_POST = do_DELETE = do_HEAD = do_PUT = _route

    def address_string(self):
        return "unix"

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


path = sys.argv[1]
if os.path.exists(path):
    os.unlink(path)
Server(path, Handler).serve_forever()
EOF
python3 "$work/engine.py" "$work/engine.sock" &
pids+=($!)

# --- isolated project ---
mkdir -p "$work/project"
cat >"$work/project/iac.toml" <<EOF
project = "fuzz"
state_dir = "$work/state"

[fetch]
cache_dir = "$work/cache"
git_config = ["http.proxy=http://127.0.0.1:9"]
[fetch.github]
host = "127.0.0.1:9"
[fetch.gitlab]
host = "127.0.0.1:9"
[fetch.bitbucket]
host = "127.0.0.1:9"

[pki]
secrets_dir = "$work/secrets"

[docker]
docker_host = "$work/engine.sock"

[serve]
max_deployments = 50
# schemathesis sends bad credentials on purpose (its auth checks); the failed-authentication
# limit would answer everything after them with 429 from this one address.
auth_failure_limit = 0
EOF

key="sb_secret_schemathesis_$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
port="$(free_port)"
(
  cd "$work/project"
  SUPABASE_URL="http://127.0.0.1:$sb_port" SUPABASE_SERVICE_ROLE_KEY="$key" \
    HTTPS_PROXY=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 ALL_PROXY=http://127.0.0.1:9 \
    NO_PROXY=127.0.0.1,localhost RUST_LOG="${RUST_LOG:-warn}" \
    exec "$iac" serve --http "127.0.0.1:$port" --uds "$work/iac.sock"
) >"$work/serve.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$port/health" >/dev/null || {
  echo "iac serve did not come up:" >&2
  cat "$work/serve.log" >&2
  exit 1
}

set +e
cd "$work" # schemathesis keeps a cache (.schemathesis/) in the current directory
schemathesis run "http://127.0.0.1:$port/openapi.json" \
  --header "Authorization: Bearer $key" \
  --checks all \
  --exclude-path /refs \
  --max-examples "$max_examples" \
  --request-timeout 30 \
  "$@"
rc=$?
# `GET /refs` asks the forge while the request waits: with every forge host dead here, a valid
# slug gets the documented 502 (504 past the deadline). Every check but "no 5xx" applies to it.
schemathesis run "http://127.0.0.1:$port/openapi.json" \
  --header "Authorization: Bearer $key" \
  --checks all \
  --exclude-checks not_a_server_error \
  --include-path /refs \
  --max-examples "$max_examples" \
  --request-timeout 30 \
  "$@" || rc=$?
set -e
if grep -q -i "panicked" "$work/serve.log"; then
  echo "iac serve panicked during the run:" >&2
  grep -i -A5 "panicked" "$work/serve.log" >&2
  rc=1
fi
exit "$rc"
