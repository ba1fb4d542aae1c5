#!/usr/bin/env bash
# Deploy benchmark: iac against `docker-compose up -d` of the SAME stack (same images, env, mounts,
# network-namespace sharing — the compose file is generated from `iac plan --json`), in one run.
# Prints wall-clock times and ratios (iac / compose). Not a test: no assertion on time.
#
#   bash scripts/bench-deploy.sh [repos-file]      (default: examples/repos.local.yaml)
#
# What is compared:
#   up    — images present, no containers: `iac deploy` (includes the mTLS health proof of every
#           service) vs `docker-compose up -d` (returns once containers are started, proves nothing)
#   noop  — everything already running and unchanged: `iac deploy` vs `docker-compose up -d`
#   down  — `iac destroy` vs `docker-compose down`
set -euo pipefail
cd "$(dirname "$0")/.."
FILE=${1:-examples/repos.local.yaml}
IAC=${IAC:-$(command -v iac || echo target/release/iac)}
[ -x "$IAC" ] || { echo "no iac binary (run make install, or set IAC=path)" >&2; exit 2; }
command -v docker-compose >/dev/null || { echo "docker-compose is required for the baseline" >&2; exit 2; }
P="bench$RANDOM"
WORK=$(mktemp -d)
export IAC_STATE_DIR="$WORK/.iac" IAC_PKI__SECRETS_DIR="$WORK/secrets" RUST_LOG=warn
cleanup() {
  "$IAC" destroy --project "$P" >/dev/null 2>&1 || true
  imgs=$(docker images -aq --filter "label=iac.project=$P"); [ -z "$imgs" ] || docker rmi -f --no-prune $imgs >/dev/null 2>&1 || true
  [ -f "$WORK/docker-compose.yml" ] && docker-compose -p "${P}c" -f "$WORK/docker-compose.yml" down -v >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2-$1:.2f}')"; }
ratio() { python3 -c "print(f'{$1/$2:.2f}x')"; }

echo "warming (builds images if needed)…"
"$IAC" deploy --project "$P" --file "$FILE" >/dev/null 2>&1
"$IAC" destroy --project "$P" >/dev/null 2>&1

t0=$(now); "$IAC" deploy --project "$P" --file "$FILE" >/dev/null 2>&1; t1=$(now)
iac_up=$(secs "$t0" "$t1")
t0=$(now); "$IAC" deploy --project "$P" --file "$FILE" >/dev/null 2>&1; t1=$(now)
iac_noop=$(secs "$t0" "$t1")
"$IAC" plan --project "$P" --file "$FILE" --json | python3 scripts/stack-to-compose.py "${P}c" > "$WORK/docker-compose.yml"
t0=$(now); "$IAC" destroy --project "$P" >/dev/null 2>&1; t1=$(now)
iac_down=$(secs "$t0" "$t1")

t0=$(now); docker-compose -p "${P}c" -f "$WORK/docker-compose.yml" up -d >/dev/null 2>&1; t1=$(now)
c_up=$(secs "$t0" "$t1")
t0=$(now); docker-compose -p "${P}c" -f "$WORK/docker-compose.yml" up -d >/dev/null 2>&1; t1=$(now)
c_noop=$(secs "$t0" "$t1")
t0=$(now); docker-compose -p "${P}c" -f "$WORK/docker-compose.yml" down >/dev/null 2>&1; t1=$(now)
c_down=$(secs "$t0" "$t1")

printf '%-6s %10s %16s %8s\n' step iac docker-compose ratio
printf '%-6s %9ss %15ss %8s\n' up "$iac_up" "$c_up" "$(ratio "$iac_up" "$c_up")"
printf '%-6s %9ss %15ss %8s\n' noop "$iac_noop" "$c_noop" "$(ratio "$iac_noop" "$c_noop")"
printf '%-6s %9ss %15ss %8s\n' down "$iac_down" "$c_down" "$(ratio "$iac_down" "$c_down")"
