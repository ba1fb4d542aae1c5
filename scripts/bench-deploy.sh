#!/usr/bin/env bash
# Deploy benchmark (`make bench`): iac against docker-compose 1.29 running the SAME stack (the compose
# project is `iac render --target compose`, the eject path: the docker provisioner's containers with
# the same images, commands, env, mounts, privileges, limits and shared network namespaces), all in
# one invocation on one engine.
# Prints wall-clock times and ratios (iac / baseline). Not a test: nothing here asserts on time.
#
#   bash scripts/bench-deploy.sh
#
# Environment:
#   BENCH_SIZES="10 30"    how many services per round (each is examples/hello under its own name)
#   BENCH_RUNS=5           repetitions of the short measurements (no-op redeploy, fetch); median shown
#   BENCH_PROJECT=benchNN  project name (default: random); with BENCH_KEEP_IMAGES=1 the built app
#                          images are kept, so a second run with the same project skips the builds
#   IAC=path               the iac binary (default: iac on PATH, else target/release/iac)
#
# Per size N:
#   deploy  — images present, nothing running: `iac deploy` (returns once every service answered its
#             mTLS HealthCheck SERVING and stayed up through the settle window) vs `docker-compose
#             up -d` (returns once containers are started; proves nothing) and vs `docker-compose
#             up -d` plus a loop until every app answers HTTP 200 through its Envoy over mTLS
#   no-op   — everything running and unchanged: `iac deploy` again vs `docker-compose up -d` again
#   destroy — `iac destroy` vs `docker-compose down`
# Then archive fetch: a local HTTP server serves two .tar.gz archives (this checkout's HEAD, and the
# same plus the host's Python standard library, for a big one); `iac inspect gh:bench/<archive>#main`
# (a fresh cache each time; includes iac's start-up and entry resolution) vs `curl | tar xz`.
#
# Everything it creates is removed on exit, also on error or Ctrl-C: containers and networks carry
# `iac.project=<project>` (iac's and the compose render's alike: `iac destroy` finds both), images
# `iac.project` too, the server and temp files live in one temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SIZES=${BENCH_SIZES:-"10 30"}
RUNS=${BENCH_RUNS:-5}
P=${BENCH_PROJECT:-bench$((RANDOM % 90000 + 10000))}
KEEP_IMAGES=${BENCH_KEEP_IMAGES:-0}
IAC=${IAC:-$(command -v iac || echo "$ROOT/target/release/iac")}
[ -x "$IAC" ] || { echo "bench: no iac binary at $IAC (run make install, or set IAC=path)" >&2; exit 2; }
for tool in docker docker-compose curl python3 tar git; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is required" >&2; exit 2; }
done
[[ $P =~ ^[a-z][a-z0-9-]{0,30}$ ]] || { echo "bench: BENCH_PROJECT=$P is not a DNS label" >&2; exit 2; }
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "bench: BENCH_RUNS=$RUNS is not a positive number" >&2; exit 2; }
MAX=0
for n in $SIZES; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "bench: BENCH_SIZES has $n, expected positive numbers" >&2; exit 2; }
  (( n > MAX )) && MAX=$n
done
(( MAX <= 99 )) || { echo "bench: at most 99 services per round" >&2; exit 2; }

C="${P}c"   # the compose project
WORK=$(mktemp -d "${TMPDIR:-/tmp}/iac-bench.XXXXXX")
COMPOSE_FILE="$WORK/render/compose/$P/compose.yaml"   # what `iac render --target compose` writes
SERVER_PID=
cleanup() {
  set +e
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  "$IAC" --config "$WORK/iac.toml" destroy --project "$P" >/dev/null 2>&1
  [ -f "$COMPOSE_FILE" ] && docker-compose -p "$C" -f "$COMPOSE_FILE" down -v >/dev/null 2>&1
  ids=$(docker ps -aq --filter "label=iac.project=$P"); [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1
  nets=$(docker network ls -q --filter "label=iac.project=$P"); [ -z "$nets" ] || docker network rm $nets >/dev/null 2>&1
  if [ "$KEEP_IMAGES" != 1 ]; then
    imgs=$(docker images -q --filter "label=iac.project=$P" | sort -u)
    [ -z "$imgs" ] || docker rmi -f --no-prune $imgs >/dev/null 2>&1
    # The build's intermediate layers after the LABEL carry the project label too (and nothing
    # else reuses them); the unlabelled shared layers stay as build cache.
    docker image prune -f --filter "label=iac.project=$P" >/dev/null 2>&1
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
py() { python3 -c "$@"; }
median() { py 'import statistics,sys; print(f"{statistics.median(float(x) for x in sys.argv[1:]):.3f}")' "$@"; }
ratio() { py "print(f'{$1/$2:.2f}x')"; }
fmt() { py "print(f'{$1:.2f} s')"; }

# run LOG cmd...: runs cmd with stdout+stderr to LOG; on failure shows LOG's tail and stops.
run() {
  local log=$1; shift
  if ! "$@" >"$log" 2>&1; then
    echo "bench: failed: $*" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
}
# timed VAR LOG cmd...: like run, and sets VAR to the wall-clock seconds.
timed() {
  local var=$1 log=$2; shift 2
  local t0 t1
  t0=$(now)
  run "$log" "$@"
  t1=$(now)
  printf -v "$var" '%s' "$(py "print(f'{$t1-$t0:.3f}')")"
}
iac() { "$IAC" --config "$WORK/iac.toml" --project "$P" "$@"; }
compose() { docker-compose -p "$C" -f "$COMPOSE_FILE" "$@"; }

# One iac configuration for the whole run: state, secrets and caches in WORK; fetch from the local
# archive server (set up below) without asking git to resolve refs.
cat >"$WORK/iac.toml" <<EOF
state_dir = "$WORK/state"
[pki]
secrets_dir = "$WORK/secrets"
[fetch]
cache_dir = "$WORK/cache"
resolve_refs = false
git_fallback = false
EOF

# The service: examples/hello, a web app on PORT (readiness: the port accepts).
mkdir -p "$WORK/src"
cp -r examples/hello "$WORK/src/hello"
repos() {  # repos N → repos file with services s01..sN
  local f="$WORK/repos-$1.yaml" i
  { echo "project: $P"; echo "services:"
    for i in $(seq 1 "$1"); do
      printf '  - slug: path:src/hello\n    name: s%02d\n    env:\n      PORT: 8080\n' "$i"
    done; } >"$f"
  echo "$f"
}

# compose_wait N: until every app s01..sN answers HTTP 200 through its Envoy's mTLS listener
# (client certificate of s01, a service of the same project: the app routes admit it). The pod's
# ports are published by its sidecar, compose service `sNN.envoy`.
compose_wait() {
  local n=$1 deadline=$(( $(date +%s) + 180 )) s port code
  local ca="$WORK/secrets/ca.pem" cert="$WORK/secrets/$P/s01.pem" key="$WORK/secrets/$P/s01.key"
  declare -A ports=()
  local pending=()
  for i in $(seq 1 "$n"); do pending+=("$(printf 's%02d' "$i")"); done
  while (( ${#pending[@]} )); do
    (( $(date +%s) < deadline )) || { echo "bench: compose services never answered: ${pending[*]}" >&2; return 1; }
    while read -r s port; do ports[$s]=$port; done < <(
      docker ps --filter "label=com.docker.compose.project=$C" \
        --format '{{.Label "com.docker.compose.service"}} {{.Ports}}' |
        sed -n 's/^\([^ ]*\)\.envoy .*127\.0\.0\.1:\([0-9]*\)->15000.*/\1 \2/p')
    for s in "${pending[@]}"; do
      port=${ports[$s]:-}
      if [ -z "$port" ]; then echo 000 >"$WORK/w.$s"; continue; fi
      curl -s -o /dev/null -w '%{http_code}' --http2 --max-time 2 --cacert "$ca" --cert "$cert" \
        --key "$key" --resolve "$s:$port:127.0.0.1" "https://$s:$port/" >"$WORK/w.$s" 2>/dev/null &
    done
    wait
    local still=()
    for s in "${pending[@]}"; do
      code=$(cat "$WORK/w.$s" 2>/dev/null || true)
      [ "$code" = 200 ] || still+=("$s")
    done
    pending=("${still[@]+"${still[@]}"}")
    (( ${#pending[@]} )) && sleep 0.1
  done
  return 0
}

# stages REPORT: the slowest service's time per stage, from `iac deploy --json`'s report.
stages() {
  py '
import json, sys
rep = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])["report"]
order = ["fetch", "resolve", "build", "certs", "render", "provision", "health"]
mx = {}
for s in rep["services"]:
    for t in s["stages"]:
        mx[t["stage"]] = max(mx.get(t["stage"], 0), t["millis"])
total = rep["millis"]
print("    iac deploy, slowest service per stage: " + ", ".join(f"{k} {mx[k]} ms" for k in order if k in mx)
      + f"; whole deploy {total} ms (in-process)")
' "$1"
}

echo "iac bench: project $P, sizes $SIZES, $RUNS runs of the short steps; $(nproc) cores," \
  "Docker $(docker version -f '{{.Server.Version}}' 2>/dev/null), $(docker-compose version --short 2>/dev/null | sed 's/^/docker-compose /')"
echo "warming: building the app images of $MAX services (skipped when they exist)…"
run "$WORK/warm.log" iac deploy --file "$(repos "$MAX")"
run "$WORK/warm-destroy.log" iac destroy

RESULTS=()
row() { RESULTS+=("$(printf '%-4s %-34s %8s   %-30s %7s   %s' "$@")"); }
for n in $SIZES; do
  f=$(repos "$n")
  echo "round: $n services…"
  timed up "$WORK/up-$n.json" iac --json deploy --file "$f"
  noops=()
  for r in $(seq 1 "$RUNS"); do
    timed t "$WORK/noop-$n-$r.log" iac deploy --file "$f"
    noops+=("$t")
  done
  noop=$(median "${noops[@]}")
  run "$WORK/render-$n.log" iac render --target compose --file "$f" --out "$WORK/render"
  timed down "$WORK/down-$n.log" iac destroy

  timed c_up "$WORK/c-up-$n.log" compose up -d
  timed c_noop "$WORK/c-noop-$n.log" compose up -d
  timed c_down "$WORK/c-down-$n.log" compose down
  t0=$(now)
  run "$WORK/c-upw-$n.log" compose up -d
  compose_wait "$n"
  t1=$(now)
  c_upw=$(py "print(f'{$t1-$t0:.3f}')")
  run "$WORK/c-down2-$n.log" compose down

  # The target (issue 12) is against the bare `up -d`, which proves nothing; `+ wait` is the same
  # proof iac gives.
  row "$n" "deploy → all SERVING" "$(fmt "$up")" "compose up -d $(fmt "$c_up")" "$(ratio "$up" "$c_up")" "≤ 1.3x (10 services)"
  row "" "" "" "compose up -d + wait $(fmt "$c_upw")" "$(ratio "$up" "$c_upw")" ""
  row "" "no-op redeploy (median)" "$(fmt "$noop")" "compose up -d $(fmt "$c_noop")" "$(ratio "$noop" "$c_noop")" "≤ 0.15 s"
  row "" "destroy" "$(fmt "$down")" "compose down $(fmt "$c_down")" "$(ratio "$down" "$c_down")" ""
  RESULTS+=("$(stages "$WORK/up-$n.json")")
done

# Archive fetch: a local server, two archives, a fresh iac cache per run.
echo "fetch: archives from a local HTTP server…"
mkdir -p "$WORK/www/bench/small/tar.gz" "$WORK/www/bench/large/tar.gz" "$WORK/large"
git archive --format=tar.gz --prefix=iac-bench/ --add-file=examples/hello/main.py HEAD \
  >"$WORK/www/bench/small/tar.gz/main"
tar xzf "$WORK/www/bench/small/tar.gz/main" -C "$WORK/large"
stdlib=$(py 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
mkdir -p "$WORK/large/iac-bench/vendor"
tar cf - -C "$(dirname "$stdlib")" --exclude=__pycache__ --exclude=test --exclude=tests \
  --exclude=site-packages --exclude=dist-packages --exclude=idlelib --exclude=turtledemo \
  "$(basename "$stdlib")" | tar xf - -C "$WORK/large/iac-bench/vendor"
tar czf "$WORK/www/bench/large/tar.gz/main" -C "$WORK/large" iac-bench
rm -rf "$WORK/large"
python3 - "$WORK/www" "$WORK/port" >"$WORK/server.log" 2>&1 <<'EOF' &
import functools, http.server, os, sys
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
handler.func.log_message = lambda *a: None
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
tmp = sys.argv[2] + ".tmp"
with open(tmp, "w") as f:
    f.write(str(srv.server_address[1]))
os.rename(tmp, sys.argv[2])
srv.serve_forever()
EOF
SERVER_PID=$!
for _ in $(seq 1 50); do [ -s "$WORK/port" ] && break; sleep 0.1; done
[ -s "$WORK/port" ] || { echo "bench: the archive server did not start" >&2; cat "$WORK/server.log" >&2; exit 1; }
PORT=$(cat "$WORK/port")
cat >>"$WORK/iac.toml" <<EOF
[fetch.github]
archive_url = "http://127.0.0.1:$PORT/{owner}/{repo}/tar.gz/{ref}"
EOF
for a in small large; do
  url="http://127.0.0.1:$PORT/bench/$a/tar.gz/main"
  bytes=$(stat -c %s "$WORK/www/bench/$a/tar.gz/main")
  files=$(tar tzf "$WORK/www/bench/$a/tar.gz/main" | wc -l)
  # one untimed round each, so both find the archive in the page cache
  curl -sf "$url" >/dev/null
  ti=(); tc=()
  for r in $(seq 1 "$RUNS"); do
    timed t "$WORK/inspect-$a-$r.log" env IAC_FETCH__CACHE_DIR="$WORK/fcache-$a-$r" \
      "$IAC" --config "$WORK/iac.toml" --project "$P" inspect "gh:bench/$a#main"
    ti+=("$t")
    rm -rf "$WORK/fcache-$a-$r"
    mkdir -p "$WORK/x-$a-$r"
    timed t "$WORK/curl-$a-$r.log" bash -o pipefail -c 'curl -sf "$1" | tar xzf - -C "$2"' _ "$url" "$WORK/x-$a-$r"
    tc+=("$t")
    rm -rf "$WORK/x-$a-$r"
  done
  mi=$(median "${ti[@]}"); mc=$(median "${tc[@]}")
  row "" "fetch $a ($(py "print(f'{$bytes/1e6:.1f}')") MB, $files entries)" "$(fmt "$mi")" \
    "curl | tar xz $(fmt "$mc")" "$(ratio "$mi" "$mc")" "≤ 1.2x"
done

echo
printf '%-4s %-34s %8s   %-30s %7s   %s\n' "n" "step" "iac" "baseline" "ratio" "target"
printf '%s\n' "${RESULTS[@]}"
