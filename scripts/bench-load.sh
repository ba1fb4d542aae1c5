#!/usr/bin/env bash
# Data-plane load benchmark (`make bench-load`): the same app at fixed request rates, reached three
# ways, in one invocation on one engine. Not a test: nothing here asserts on time.
#
#   bash scripts/bench-load.sh
#
#   direct — oha inside the target's app container → 127.0.0.1:$PORT (no Envoy): the baseline
#   edge   — oha on the host → the target's edge (127.0.0.1:<port>) → its Envoy → the app
#   mesh   — oha inside the client's app container → its Envoy (127.0.0.1:15001, Host: target)
#            → mTLS → the target's Envoy → the app
#
# For each rate it prints p50/p99 (oha's --latency-correction: measured from when each request was
# due, so a stalled server is not hidden — coordinated omission), errors, the latency the edge and
# the mesh add over direct, and the CPU the sidecars used per 1000 req/s (the delta of each
# sidecar container's cgroup cpuacct.usage over the run, divided by the run's length and rate).
#
# Environment:
#   BENCH_RATES="500 1000 2000"   requests per second (oha -q)
#   BENCH_SECONDS=20              length of each run
#   BENCH_CONNECTIONS=16          connections per run (oha -c)
#   BENCH_PROJECT=loadNNNNN       project name (default: random)
#   IAC=path                      the iac binary (default: iac on PATH, else target/release/iac)
#   IAC_AGENT_BIN=path            the static agent (default: scripts/build-agent.sh)
#   OHA=path                      a static oha (default: built once into OHA_CACHE with cargo install)
#   OHA_CACHE=dir                 default ~/.cache/iac/oha
#
# Everything it creates is labelled iac.bench=<project> or iac.project=<project> (removed on exit,
# also on error or Ctrl-C), or lives in one temp dir; oha stays in its cache.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RATES=${BENCH_RATES:-"500 1000 2000"}
SECS=${BENCH_SECONDS:-20}
CONNS=${BENCH_CONNECTIONS:-16}
P=${BENCH_PROJECT:-load$((RANDOM % 90000 + 10000))}
IAC=${IAC:-$(command -v iac || echo "$ROOT/target/release/iac")}
OHA_CACHE=${OHA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/iac/oha}
OHA_VERSION=1.16.0
[ -x "$IAC" ] || { echo "bench-load: no iac binary at $IAC (run make install, or set IAC=path)" >&2; exit 2; }
for tool in docker curl python3 cargo readelf; do
  command -v "$tool" >/dev/null || { echo "bench-load: $tool is required" >&2; exit 2; }
done
[[ $P =~ ^[a-z][a-z0-9-]{0,30}$ ]] || { echo "bench-load: BENCH_PROJECT=$P is not a DNS label" >&2; exit 2; }
[[ $SECS =~ ^[1-9][0-9]*$ ]] || { echo "bench-load: BENCH_SECONDS=$SECS is not a positive number" >&2; exit 2; }
[[ $CONNS =~ ^[1-9][0-9]*$ ]] || { echo "bench-load: BENCH_CONNECTIONS=$CONNS is not a positive number" >&2; exit 2; }
for r in $RATES; do
  [[ $r =~ ^[1-9][0-9]*$ ]] || { echo "bench-load: BENCH_RATES has $r, expected positive numbers" >&2; exit 2; }
done

# oha, static (it runs inside the app containers too, whatever their libc): built once.
if [ -z "${OHA:-}" ]; then
  OHA=$OHA_CACHE/bin/oha
  if [ ! -x "$OHA" ]; then
    echo "bench-load: building oha $OHA_VERSION (static) into $OHA_CACHE — once" >&2
    RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR="$OHA_CACHE/target" \
      cargo install --locked oha --version "$OHA_VERSION" \
      --target x86_64-unknown-linux-gnu --root "$OHA_CACHE" >&2
    rm -rf "$OHA_CACHE/target"
  fi
fi
if LC_ALL=C readelf -l "$OHA" | grep -q 'Requesting program interpreter'; then
  echo "bench-load: $OHA is dynamically linked; expected a static binary (it runs in the app containers)" >&2
  exit 2
fi
AGENT=${IAC_AGENT_BIN:-$(bash scripts/build-agent.sh)}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/iac-bench-load.XXXXXX")
cleanup() {
  set +e
  "$IAC" --config "$WORK/iac.toml" destroy --project "$P" >/dev/null 2>&1
  for f in "label=iac.bench=$P" "label=iac.project=$P"; do
    ids=$(docker ps -aq --filter "$f"); [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1
  done
  imgs=$(docker images -q --filter "label=iac.project=$P" | sort -u)
  [ -z "$imgs" ] || docker rmi -f --no-prune $imgs >/dev/null 2>&1
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat >"$WORK/iac.toml" <<EOF
state_dir = "$WORK/state"
[pki]
secrets_dir = "$WORK/secrets"
[fetch]
cache_dir = "$WORK/cache"
[images]
agent_binary = "$AGENT"
EOF

# The app: a minimal asyncio HTTP/1.1 server (keep-alive, a fixed 3-byte answer), so that the
# app costs little next to the proxies and the same code answers on every path.
mkdir -p "$WORK/src/fast"
cat >"$WORK/src/fast/main.py" <<'EOF'
import asyncio, os, signal

ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\n\r\nok\n"


class Http(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buf = transport, b""

    def data_received(self, data):
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            self.buf = self.buf[end + 4:]
            self.transport.write(ANSWER)


async def main():
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    server = await loop.create_server(Http, "0.0.0.0", int(os.environ["PORT"]), backlog=1024)
    print("fast: listening on", os.environ["PORT"], flush=True)
    async with server:
        await stop


asyncio.run(main())
EOF
cat >"$WORK/repos.yaml" <<EOF
project: $P
services:
  - slug: path:src/fast
    name: target
    expose: true
    env: {PORT: 8080}
  - slug: path:src/fast
    name: client
    env: {PORT: 8080}
EOF
iac() { (cd "$WORK" && "$IAC" --config "$WORK/iac.toml" --project "$P" "$@"); }

echo "bench-load: deploying $P (target, client)" >&2
iac deploy --file "$WORK/repos.yaml" --json >"$WORK/deploy.json" 2>"$WORK/deploy.err" || {
  echo "bench-load: the deploy failed" >&2; tail -n 30 "$WORK/deploy.err" >&2; tail -n 5 "$WORK/deploy.json" >&2; exit 1; }
EDGE=$(python3 - "$WORK/deploy.json" <<'EOF'
import json, sys
last = [l for l in open(sys.argv[1]) if l.lstrip().startswith("{")][-1]
for s in json.loads(last)["report"]["services"]:
    if s["service"] == "target":
        print(s["url"])
EOF
)
[ -n "$EDGE" ] || { echo "bench-load: the target has no edge URL" >&2; exit 1; }
for c in target client; do docker cp "$OHA" "$P-$c:/tmp/oha" >/dev/null; done

cpu_ns() {  # cpu_ns CONTAINER → cumulative CPU time of its cgroup, in ns (cgroup v1 or v2)
  local id; id=$(docker inspect -f '{{.Id}}' "$1")
  for f in /sys/fs/cgroup/cpuacct/docker/$id/cpuacct.usage /sys/fs/cgroup/cpu,cpuacct/docker/$id/cpuacct.usage \
           /sys/fs/cgroup/cpuacct/system.slice/docker-$id.scope/cpuacct.usage; do
    [ -r "$f" ] && { cat "$f"; return; }
  done
  for f in /sys/fs/cgroup/system.slice/docker-$id.scope/cpu.stat /sys/fs/cgroup/docker/$id/cpu.stat; do
    [ -r "$f" ] && { awk '/^usage_usec/ {print $2 * 1000}' "$f"; return; }
  done
  echo "bench-load: no cgroup CPU counter found for $1" >&2; exit 1
}

# run PATHNAME RATE → one JSON line: path, rate, p50/p99 ms, ok/errors, sidecar CPU seconds
run() {
  local path=$1 rate=$2 out="$WORK/$1-$2.json" a0 b0 a1 b1
  local args=(-z "${SECS}s" -q "$rate" -c "$CONNS" --latency-correction --no-tui --output-format json)
  a0=$(cpu_ns "$P-target-envoy"); b0=$(cpu_ns "$P-client-envoy")
  case $path in
    direct) docker exec "$P-target" /tmp/oha "${args[@]}" http://127.0.0.1:8080/ >"$out" ;;
    edge) "$OHA" "${args[@]}" "$EDGE/" >"$out" ;;
    mesh) docker exec "$P-client" /tmp/oha "${args[@]}" -H "Host: target" http://127.0.0.1:15001/ >"$out" ;;
  esac
  a1=$(cpu_ns "$P-target-envoy"); b1=$(cpu_ns "$P-client-envoy")
  python3 - "$out" "$path" "$rate" "$SECS" "$((a1 - a0))" "$((b1 - b0))" <<'EOF'
import json, sys
out, path, rate, secs, a, b = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
r = json.load(open(out))
codes = r.get("statusCodeDistribution", {})
ok = sum(v for k, v in codes.items() if k.startswith("2"))
# Requests still in flight when the run's time is up are "aborted due to deadline": not errors.
errs = {k: v for k, v in r.get("errorDistribution", {}).items() if k != "aborted due to deadline"}
bad = sum(v for k, v in codes.items() if not k.startswith("2")) + sum(errs.values())
pct = r["latencyPercentiles"]
print(json.dumps({"path": path, "rate": rate, "p50": pct["p50"] * 1000, "p99": pct["p99"] * 1000,
                  "rps": r["summary"]["requestsPerSec"], "ok": ok, "errors": bad,
                  "target_cpu": a / 1e9, "client_cpu": b / 1e9, "secs": secs}))
EOF
}

: >"$WORK/results.jsonl"
for rate in $RATES; do
  for path in direct edge mesh; do
    echo "bench-load: $path at $rate req/s for ${SECS}s" >&2
    run "$path" "$rate" >>"$WORK/results.jsonl"
    sleep 2
  done
done

python3 - "$WORK/results.jsonl" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {(r["path"], r["rate"]): r for r in rows}
print(f"{'path':<7}{'rate':>6}{'achieved':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'target envoy CPU':>18}{'client envoy CPU':>18}")
for r in rows:
    print(f"{r['path']:<7}{r['rate']:>6}{r['rps']:>10.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}{r['errors']:>8}"
          f"{r['target_cpu']:>16.2f} s{r['client_cpu']:>16.2f} s")
print()
print("added over direct (ms)             p50     p99    sidecar vCPU per 1000 req/s")
for rate in sorted({r["rate"] for r in rows}):
    d, e, m = by.get(("direct", rate)), by.get(("edge", rate)), by.get(("mesh", rate))
    if not (d and e and m):
        continue
    per_k = lambda cpu, r: cpu / r["secs"] / (r["rps"] / 1000) if r["rps"] else float("nan")
    print(f"  {rate:>5} req/s edge (1 Envoy)     {e['p50']-d['p50']:>6.2f}  {e['p99']-d['p99']:>6.2f}    "
          f"{per_k(e['target_cpu'], e):.3f} (the target's)")
    print(f"  {rate:>5} req/s mesh (2 Envoys)    {m['p50']-d['p50']:>6.2f}  {m['p99']-d['p99']:>6.2f}    "
          f"{per_k(m['client_cpu'], m):.3f} client + {per_k(m['target_cpu'], m):.3f} target")
EOF
echo "bench-load: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(docker version -f 'Docker {{.Server.Version}}')" >&2
