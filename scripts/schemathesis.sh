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
# Nothing reaches Docker or the network: the config points `[docker] docker_host` at a socket
# that does not exist, so an accepted deploy ends with an `unavailable` error line before any
# fetch, build or container (and `path:`/`git+file:` slugs are refused by the API's slug policy,
# `[serve] allow_local_sources` being off). The exit code is schemathesis's.
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

# --- isolated project ---
mkdir -p "$work/project"
cat >"$work/project/iac.toml" <<EOF
project = "fuzz"
state_dir = "$work/state"

[fetch]
cache_dir = "$work/cache"

[pki]
secrets_dir = "$work/secrets"

[docker]
docker_host = "unix://$work/no-engine.sock"

[serve]
max_deployments = 50
EOF

key="sb_secret_schemathesis_$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
port="$(free_port)"
(
  cd "$work/project"
  SUPABASE_URL="http://127.0.0.1:$sb_port" SUPABASE_SERVICE_ROLE_KEY="$key" \
    RUST_LOG="${RUST_LOG:-warn}" \
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
schemathesis run "http://127.0.0.1:$port/openapi.json" \
  --header "Authorization: Bearer $key" \
  --checks all \
  --max-examples "$max_examples" \
  --request-timeout 30 \
  "$@"
rc=$?
set -e
if grep -q -i "panicked" "$work/serve.log"; then
  echo "iac serve panicked during the run:" >&2
  grep -i -A5 "panicked" "$work/serve.log" >&2
  rc=1
fi
exit "$rc"
