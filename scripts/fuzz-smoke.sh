#!/usr/bin/env bash
# Smoke run of every cargo-fuzz target in fuzz/: a few seconds each (FUZZ_SECS, default 5), seeded
# with fuzz/seeds/<target>/ and the kept crash inputs in fuzz/regressions/<target>/. Fails when a
# target crashes (the crash input is left in the printed artifacts dir) or cannot be built.
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). cargo-fuzz wants a nightly toolchain for the
# sanitizer flags; on a stable one RUSTC_BOOTSTRAP=1 (set here) lets it through. The build goes
# to $CARGO_TARGET_DIR when set, else fuzz/target. Long runs: see fuzz/README.md.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
secs="${FUZZ_SECS:-5}"
targets=(slug_parse repos_file tar_extract)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: cargo-fuzz is not installed; expected it on PATH (cargo install cargo-fuzz)" >&2
    exit 1
fi
export RUSTC_BOOTSTRAP=1

work="$(mktemp -d "${TMPDIR:-/tmp}/iac-fuzz-smoke.XXXXXX")"
trap 'rm -rf "$work"' EXIT

cd "$root/fuzz"
if ! cargo fuzz build >"$work/build.log" 2>&1; then
    echo "fuzz-smoke: cargo fuzz build failed:" >&2
    tail -n 40 "$work/build.log" >&2
    exit 1
fi
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
    if cargo fuzz run "$t" "$corpus" "${seeds[@]}" -- \
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
