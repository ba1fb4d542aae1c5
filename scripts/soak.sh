#!/usr/bin/env bash
# Soak (issue 18): a project with one crash-looping service beside healthy ones runs for
# SOAK_SECONDS (default 900) while `iac serve` answers a health poll every few seconds; every
# SOAK_EVERY seconds the open file descriptors and RSS of each agent (PID 1 of every app container,
# and the project's keeper) and of `iac serve` are sampled from the host's /proc (the engine's pid
# of each container's PID 1). Prints every sample and, at the end, the growth per process (last
# against the first sample after the warm-up). Not a test: nothing here asserts.
#
#   bash scripts/soak.sh                        # 15 minutes
#   SOAK_SECONDS=120 SOAK_EVERY=10 bash scripts/soak.sh
#
# Environment: IAC (the iac binary; default iac on PATH, else target/release/iac), IAC_AGENT_BIN
# (the static agent; default scripts/build-agent.sh), SOAK_PROJECT (default random).
# Must run as root (reads /proc of other users' processes). Everything it creates is removed on
# exit (iac destroy, then anything labelled iac.project=<project>).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECS=${SOAK_SECONDS:-900}
EVERY=${SOAK_EVERY:-30}
P=${SOAK_PROJECT:-soak$((RANDOM % 90000 + 10000))}
IAC=${IAC:-$(command -v iac || echo "$ROOT/target/release/iac")}
[ -x "$IAC" ] || { echo "soak: no iac binary at $IAC (run make install, or set IAC=path)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "soak: run as root (it reads /proc of the containers' processes)" >&2; exit 2; }
[[ $SECS =~ ^[1-9][0-9]*$ && $EVERY =~ ^[1-9][0-9]*$ ]] || { echo "soak: SOAK_SECONDS and SOAK_EVERY are positive numbers of seconds" >&2; exit 2; }
AGENT=${IAC_AGENT_BIN:-$(bash scripts/build-agent.sh)}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/iac-soak.XXXXXX")
SERVE_PID=
cleanup() {
  set +e
  [ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null
  (cd "$WORK" && "$IAC" --config "$WORK/iac.toml" destroy --project "$P" >/dev/null 2>&1)
  ids=$(docker ps -aq --filter "label=iac.project=$P"); [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1
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
mkdir -p "$WORK/src/crashy" "$WORK/src/worker"
cp -r examples/hello "$WORK/src/hello"
printf 'import sys\nprint("crashy: failing", flush=True)\nsys.exit(1)\n' >"$WORK/src/crashy/main.py"
cat >"$WORK/src/worker/main.py" <<'EOF'
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    print("worker tick", flush=True)
    time.sleep(1)
EOF
# crashy restarts every 1-2 s: ~600 crashes in 15 minutes, each a new child, pipes and log lines.
cat >"$WORK/repos.yaml" <<EOF
project: $P
services:
  - slug: path:src/hello
    expose: true
    env: {PORT: 8080}
  - slug: path:src/worker
  - slug: path:src/crashy
    env: {IAC_RESTART_BACKOFF: 1s, IAC_RESTART_BACKOFF_MAX: 2s}
EOF
iac() { (cd "$WORK" && "$IAC" --config "$WORK/iac.toml" --project "$P" "$@"); }

echo "soak: deploying $P (hello, worker, crashy)" >&2
iac deploy --file "$WORK/repos.yaml" >"$WORK/deploy.log" 2>&1 || true  # crashy fails the deploy
iac health --wait 120s >/dev/null 2>&1 || true
SOCK="$WORK/iac.sock"
(cd "$WORK" && exec "$IAC" --config "$WORK/iac.toml" --project "$P" serve --uds "$SOCK" >"$WORK/serve.log" 2>&1) &
SERVE_PID=$!
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.1; done
[ -S "$SOCK" ] || { echo "soak: iac serve did not listen on $SOCK" >&2; cat "$WORK/serve.log" >&2; exit 1; }
SERVE_REAL=$SERVE_PID  # the subshell exec'd iac

# The health poll `iac serve` answers the whole time (each one probes every service over mTLS).
( while kill -0 "$SERVE_PID" 2>/dev/null; do
    curl -s --unix-socket "$SOCK" "http://iac/services?project=$P" >/dev/null || echo "poll failed" >>"$WORK/poll.err"
    sleep 3
  done ) &
POLL_PID=$!

sample() {  # one line per process: elapsed name fds rss_kib
  local t=$1 c pid
  for c in "$P-hello" "$P-worker" "$P-crashy" "${P}_iac-keeper"; do
    pid=$(docker inspect -f '{{.State.Pid}}' "$c" 2>/dev/null || echo 0)
    if [ "$pid" -gt 0 ] 2>/dev/null && [ -d "/proc/$pid" ]; then
      echo "$t $c $(ls "/proc/$pid/fd" | wc -l) $(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")"
    fi
  done
  echo "$t iac-serve $(ls "/proc/$SERVE_REAL/fd" | wc -l) $(awk '/^VmRSS/ {print $2}' "/proc/$SERVE_REAL/status")"
}

echo "soak: sampling every ${EVERY}s for ${SECS}s (elapsed process fds rss_kib)" >&2
: >"$WORK/samples"
start=$(date +%s)
while :; do
  t=$(( $(date +%s) - start ))
  sample "$t" | tee -a "$WORK/samples"
  (( t >= SECS )) && break
  sleep "$EVERY"
done
kill "$POLL_PID" 2>/dev/null || true
# `iac health` exits 1 (crashy is NOT_SERVING): its output is what counts.
restarts=$( { iac health --json 2>/dev/null || true; } | python3 -c '
import json, sys
last = [l for l in sys.stdin if l.lstrip().startswith("{")][-1]
for s in json.loads(last)["services"]:
    if s["running"]["service"] == "crashy":
        print((s.get("health") or {}).get("restarts", {}).get("count", "?"))' || echo "?")
python3 - "$WORK/samples" "$EVERY" "$restarts" "$( [ -f "$WORK/poll.err" ] && wc -l <"$WORK/poll.err" || echo 0)" <<'EOF'
import sys, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    t, name, fds, rss = line.split()
    rows[name].append((int(t), int(fds), int(rss)))
every = int(sys.argv[2])
print(f"\ncrashy restarts counted by its agent: {sys.argv[3]}; failed health polls: {sys.argv[4]}")
print(f"{'process':<28}{'fds first→last (max)':>24}{'RSS KiB first→last (max)':>30}")
for name, s in rows.items():
    # The first sample after a one-minute warm-up is the reference (start-up allocations are not growth).
    ref = next((r for r in s if r[0] >= min(60, s[-1][0])), s[0])
    last = s[-1]
    print(f"{name:<28}{f'{ref[1]}→{last[1]} ({max(r[1] for r in s)})':>24}"
          f"{f'{ref[2]}→{last[2]} ({max(r[2] for r in s)})':>30}")
EOF
echo "soak: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(docker version -f 'Docker {{.Server.Version}}')" >&2
