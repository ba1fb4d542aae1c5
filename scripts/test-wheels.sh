#!/usr/bin/env bash
# test-wheels.sh — downloads, on the host, the binary wheels the end-to-end fixtures of
# crates/iac-bin/tests/fixtures/apps/ depend on, for each app's Python (its .python-version, else
# 3.11), into one find-links directory. Tests never reach the network: tests/public_apps.rs points
# the resolver container there ([images.resolver] find_links) with --no-index. (The download runs
# on the host, but from a fixed list in this script: no repo steers it.) Run by `make test-deps`; a second run only checks the stamp.
#
# Environment: IAC_TEST_WHEELS [${XDG_CACHE_HOME:-$HOME/.cache}/iac/test-wheels]
#              IAC_PIP [python3 -m pip]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
APPS="$ROOT/crates/iac-bin/tests/fixtures/apps"
DEST="${IAC_TEST_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/iac/test-wheels}"
read -r -a PIP <<<"${IAC_PIP:-python3 -m pip}"
log() { printf '[test-wheels] %s\n' "$*"; }

# What determines the result: every app's requirements and Python, and the target flags.
plan() {
  local app version
  for app in "$APPS"/*/; do
    [ -f "$app/requirements.txt" ] || continue
    version="$(grep -m1 -v '^#' "$app/.python-version" 2>/dev/null || echo 3.11)"
    printf '%s %s\n' "$(basename "$app")" "$version"
  done
}
want="$( (plan; for a in "$APPS"/*/requirements.txt; do cat "$a"; done
  for v in $(plan | cut -d' ' -f2 | sort -u); do bash "$ROOT/scripts/bootstrap-images.sh" --print-pip-target "$v"; done) \
  | sha256sum | cut -c1-64)"
if [ -f "$DEST/.iac-test-wheels" ] && [ "$(cat "$DEST/.iac-test-wheels")" = "$want" ]; then
  log "$DEST: kept ($(ls "$DEST"/*.whl | wc -l) wheels)"
  exit 0
fi
mkdir -p "$(dirname "$DEST")"
staging="$(mktemp -d "$DEST.tmp.XXXXXX")"
trap 'rm -rf "$staging"' EXIT
while read -r app version; do
  mapfile -t target < <(bash "$ROOT/scripts/bootstrap-images.sh" --print-pip-target "$version")
  "${PIP[@]}" download --quiet --disable-pip-version-check --dest "$staging" "${target[@]}" \
    -r "$APPS/$app/requirements.txt" \
    || { echo "[test-wheels] pip download for $app (CPython $version) failed" >&2; exit 1; }
  log "$app: wheels for CPython $version"
done < <(plan)
printf '%s\n' "$want" >"$staging/.iac-test-wheels"
rm -rf "$DEST.old"
[ -e "$DEST" ] && mv "$DEST" "$DEST.old"
mv "$staging" "$DEST"
rm -rf "$DEST.old"
trap - EXIT
log "$DEST: $(ls "$DEST"/*.whl | wc -l) wheels, $(du -sm "$DEST" | cut -f1) MB"
