#!/usr/bin/env bash
# test-wheels.sh — downloads, on the host, the binary wheels the end-to-end fixtures of
# crates/iac-bin/tests/fixtures/apps/ depend on, for each app's Python (its .python-version, else
# 3.11), into one find-links directory. Tests never reach the network: tests/public_apps.rs points
# the resolver container there ([images.resolver] find_links) with --no-index. (The download runs
# on the host, but from a fixed list in this script: no repo steers it.) Run by `make test-deps`; a second run only checks the stamp.
#
# With IAC_TEST_REALISTIC=1 it also serves the opt-in realistic set
# (crates/iac-bin/tests/fixtures/realistic/, tests/realistic_apps.rs): those apps' wheels, the pins
# of the fixtures that install from a lock file (LOCKED below: uv.lock, pdm.lock, Pipfile.lock) and
# the source distributions of fixtures/realistic/sdists/ (packed here, deterministically, as PyPI
# would serve them; the resolver container builds them). Without it, nothing of that set is
# downloaded and the stamp is what it was before the set existed.
#
# Environment: IAC_TEST_WHEELS [${XDG_CACHE_HOME:-$HOME/.cache}/iac/test-wheels]
#              IAC_PIP [python3 -m pip]
#              IAC_TEST_REALISTIC [unset; 1 adds the realistic set]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
APPS="$ROOT/crates/iac-bin/tests/fixtures/apps"
REAL="$ROOT/crates/iac-bin/tests/fixtures/realistic"
SDISTS="$REAL/sdists"
REALISTIC="${IAC_TEST_REALISTIC:-0}"
# `ci` (the realistic set's CI subset, see realistic_apps.rs) takes the same wheelhouse as `1`.
case "$REALISTIC" in 0|1) ;; ci) REALISTIC=1 ;; *) echo "[test-wheels] IAC_TEST_REALISTIC=$REALISTIC: expected 0, 1 or ci" >&2; exit 2 ;; esac
# What the realistic lock-file fixtures pin (uv-fastapi-virtual/uv.lock, pdm-fastapi/pdm.lock,
# pipenv-flask/Pipfile.lock), for CPython 3.11, and the build backend of the sdists.
LOCKED=(annotated-doc==0.0.7 annotated-types==0.8.0 anyio==4.16.0 click==8.5.1 fastapi==0.165.0
  h11==0.16.0 idna==3.21 opentelemetry-api==1.45.3 pydantic==2.14.4 pydantic-core==2.50.5
  starlette==1.10.0 typing-extensions==4.16.0 typing-inspection==0.4.5 uvicorn==0.55.0
  blinker==1.9.0 flask==3.1.3 gunicorn==27.0.1 itsdangerous==2.2.0 jinja2==3.1.6 markupsafe==3.0.4
  werkzeug==3.1.9 flit-core==4.2.0)
DIRS=("$APPS")
[ "$REALISTIC" = 1 ] && DIRS+=("$REAL")
DEST="${IAC_TEST_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/iac/test-wheels}"
read -r -a PIP <<<"${IAC_PIP:-python3 -m pip}"
log() { printf '[test-wheels] %s\n' "$*"; }

# What determines the result: every app's requirements and Python, and the target flags.
plan() {
  local dir app version
  for dir in "${DIRS[@]}"; do
    for app in "$dir"/*/; do
      [ -f "$app/requirements.txt" ] || continue
      version="$(grep -m1 -v '^#' "$app/.python-version" 2>/dev/null || echo 3.11)"
      printf '%s %s\n' "$(basename "$app")" "$version"
    done
  done
}
# The directory of a fixture named by plan().
app_dir() {
  local dir
  for dir in "${DIRS[@]}"; do
    [ -d "$dir/$1" ] && { printf '%s\n' "$dir/$1"; return; }
  done
  echo "[test-wheels] no fixture $1" >&2
  exit 1
}
want="$( (plan; for dir in "${DIRS[@]}"; do for a in "$dir"/*/requirements.txt; do cat "$a"; done; done
  if [ "$REALISTIC" = 1 ]; then
    printf '%s\n' "${LOCKED[@]}"
    echo "sdist packing: mtime 2000-01-01"; (cd "$SDISTS" && find . -type f | LC_ALL=C sort | xargs sha256sum)
  fi
  for v in $(plan | cut -d' ' -f2 | sort -u); do bash "$ROOT/scripts/bootstrap-images.sh" --print-pip-target "$v"; done) \
  | sha256sum | cut -c1-64)"
if [ -f "$DEST/.iac-test-wheels" ] && [ "$(cat "$DEST/.iac-test-wheels")" = "$want" ]; then
  log "$DEST: kept ($(ls "$DEST"/*.whl | wc -l) wheels)"
  exit 0
fi
mkdir -p "$(dirname "$DEST")"
staging="$(mktemp -d "$DEST.tmp.XXXXXX")"
trap 'rm -rf "$staging"' EXIT
local_names=()
if [ "$REALISTIC" = 1 ]; then
  # The sdists: NAME-VERSION/ packed as NAME-VERSION.tar.gz with fixed owners, order and times
  # (2000-01-01: a wheel is a zip, which refuses times before 1980).
  for src in "$SDISTS"/*/; do
    base="$(basename "$src")"
    tar --sort=name --mtime='2000-01-01 00:00:00Z' --owner=0 --group=0 --numeric-owner -C "$SDISTS" -cf - "$base" \
      | gzip -n -9 >"$staging/$base.tar.gz"
    local_names+=("${base%-*}")
    log "$base.tar.gz: packed"
  done
  mapfile -t target < <(bash "$ROOT/scripts/bootstrap-images.sh" --print-pip-target 3.11)
  "${PIP[@]}" download --quiet --disable-pip-version-check --dest "$staging" "${target[@]}" "${LOCKED[@]}" \
    || { echo "[test-wheels] pip download of the locked pins failed" >&2; exit 1; }
  log "lock fixtures: wheels for CPython 3.11"
fi
while read -r app version; do
  mapfile -t target < <(bash "$ROOT/scripts/bootstrap-images.sh" --print-pip-target "$version")
  reqs="$(app_dir "$app")/requirements.txt"
  if [ "${#local_names[@]}" -gt 0 ]; then
    # A requirement on one of the local sdists is served by its tarball, not downloaded.
    filtered="$staging/.req-$app"
    grep -v -i -E "^($(IFS='|'; echo "${local_names[*]}"))([^a-z0-9_.-]|\$)" "$reqs" >"$filtered" || true
    reqs="$filtered"
  fi
  "${PIP[@]}" download --quiet --disable-pip-version-check --dest "$staging" "${target[@]}" \
    -r "$reqs" \
    || { echo "[test-wheels] pip download for $app (CPython $version) failed" >&2; exit 1; }
  rm -f "$staging/.req-$app"
  log "$app: wheels for CPython $version"
done < <(plan)
printf '%s\n' "$want" >"$staging/.iac-test-wheels"
rm -rf "$DEST.old"
[ -e "$DEST" ] && mv "$DEST" "$DEST.old"
mv "$staging" "$DEST"
rm -rf "$DEST.old"
trap - EXIT
log "$DEST: $(ls "$DEST"/*.whl | wc -l) wheels, $(du -sm "$DEST" | cut -f1) MB"
