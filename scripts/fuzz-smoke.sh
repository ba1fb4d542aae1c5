#!/usr/bin/env bash
# Smoke run of every cargo-fuzz target in fuzz/ (`cargo fuzz list`): a few seconds each (FUZZ_SECS,
# default 5), seeded with fuzz/seeds/<target>/ and the kept crash inputs in
# fuzz/regressions/<target>/. Fails when a target crashes (the crash input is copied to
# fuzz/artifacts/<target>/) or cannot be built. `make test` runs it.
#
# The smoke build is a debug build (overflow checks and debug assertions on) without a sanitizer,
# so it compiles in minutes and is cached; the 10-minute runs of fuzz/README.md use ASan.
# Needs cargo-fuzz (`make test-deps` installs it). cargo-fuzz wants a nightly toolchain for its
# -Z flags; on a stable one RUSTC_BOOTSTRAP=1 (set here) lets them through. The build goes to
# $FUZZ_TARGET_DIR, default $CARGO_TARGET_DIR/fuzz (else fuzz/target): never the main build's own
# dirs, whose artifacts the instrumented flags would otherwise invalidate.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
secs="${FUZZ_SECS:-5}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: cargo-fuzz is not installed; expected it on PATH (cargo install cargo-fuzz)" >&2
    exit 1
fi
export RUSTC_BOOTSTRAP=1
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
    fuzz_target_dir="${FUZZ_TARGET_DIR:-$CARGO_TARGET_DIR/fuzz}"
else
    fuzz_target_dir="${FUZZ_TARGET_DIR:-$root/fuzz/target}"
fi
# The same flags for build and run, so `run` finds what `build` made.
flags=(-s none --dev --target-dir "$fuzz_target_dir")

work="$(mktemp -d "${TMPDIR:-/tmp}/iac-fuzz-smoke.XXXXXX")"
trap 'rm -rf "$work"' EXIT

cd "$root/fuzz"
mapfile -t targets < <(cargo fuzz list)
if [ "${#targets[@]}" -eq 0 ]; then
    echo "fuzz-smoke: cargo fuzz list found no targets in $root/fuzz" >&2
    exit 1
fi
started=$(date +%s)
if ! cargo fuzz build "${flags[@]}" >"$work/build.log" 2>&1; then
    echo "fuzz-smoke: cargo fuzz build failed:" >&2
    tail -n 40 "$work/build.log" >&2
    exit 1
fi
echo "fuzz-smoke: built ${#targets[@]} targets in $(( $(date +%s) - started ))s ($fuzz_target_dir)"
status=0
for t in "${targets[@]}"; do
    corpus="$work/corpus/$t"
    artifacts="$work/artifacts/$t/"
    mkdir -p "$corpus" "$artifacts"
    seeds=()
    for d in "seeds/$t" "regressions/$t"; do
        [ -d "$d" ] && seeds+=("$d")
    done
    log="$work/$t.log"
    if cargo fuzz run "${flags[@]}" "$t" "$corpus" "${seeds[@]}" -- \
        -max_total_time="$secs" -artifact_prefix="$artifacts" -print_final_stats=1 >"$log" 2>&1; then
        runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)"
        echo "fuzz-smoke: $t ok (${runs:-?} executions in ${secs}s)"
    else
        echo "fuzz-smoke: $t FAILED; last lines of its log:" >&2
        tail -n 40 "$log" >&2
        keep="$root/fuzz/artifacts/$t"
        mkdir -p "$keep"
        cp -r "$artifacts". "$keep"/ 2>/dev/null || true
        echo "fuzz-smoke: crash inputs copied to $keep" >&2
        status=1
    fi
done
exit "$status"
