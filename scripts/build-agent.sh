#!/usr/bin/env bash
# Builds the statically linked iac-agent (design §5: it is copied into app images of any
# distribution and glibc version) and prints the path of the binary on stdout.
#
#   scripts/build-agent.sh            # → …/target/x86_64-unknown-linux-gnu/release/iac-agent
#
# Idempotent: a second run with no source change is a cargo no-op (about a second). Honours
# CARGO_TARGET_DIR and any cargo config, because the path is taken from cargo's own build report.
# The explicit --target keeps build scripts and proc-macros dynamic while the agent is static-pie.
# Cargo's progress and errors go to stderr.
set -euo pipefail

target=x86_64-unknown-linux-gnu
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -n "${CARGO_TARGET_DIR:-}" ]]; then
    # A relative CARGO_TARGET_DIR means relative to where the caller stands, not to this repo.
    CARGO_TARGET_DIR="$(cd "$OLDPWD" && realpath -m -- "$CARGO_TARGET_DIR")"
    export CARGO_TARGET_DIR
fi

report="$(RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target "$target" \
    -p iac-agent --bin iac-agent --message-format=json-render-diagnostics)"
bin="$(printf '%s\n' "$report" | grep '"reason":"compiler-artifact"' | grep '"name":"iac-agent"' \
    | grep -o '"executable":"[^"]*"' | tail -n 1 | cut -d'"' -f4)"
if [[ -z "$bin" || ! -x "$bin" ]]; then
    echo "build-agent.sh: cargo reported no iac-agent executable (expected one under target/$target/release)" >&2
    exit 1
fi

# Refuse to hand out a binary that needs a dynamic loader: it would not start on other bases.
if command -v readelf >/dev/null; then
    if LC_ALL=C readelf -l "$bin" | grep -q 'Requesting program interpreter'; then
        echo "build-agent.sh: $bin is dynamically linked (expected static; is RUSTFLAGS overridden by a cargo config?)" >&2
        exit 1
    fi
else
    echo "build-agent.sh: readelf not found (binutils); not verifying that $bin is static" >&2
fi
printf '%s\n' "$bin"
