#!/usr/bin/env bash
# Builds the fuzz targets and fuzzes each for a bounded time, on the stable toolchain.
#
#   fuzz/run.sh [SECONDS] [TARGET]     (default 60 seconds per target; every target)
#
# FUZZ_SEED=N fixes libFuzzer's random seed, so a run from the same corpus (a clean clone: the committed
# corpus) takes the same path every time, as far as its time allows: CI uses it, so its verdict does not
# depend on luck. Unset, every run explores afresh (the long runs in docs/fuzzing.md).
#
# Exits 0 when the run ends by its time limit with no failure; non-zero when a regression input or a newly
# found input panics, trips an oracle assertion, times out or exceeds the memory limit (the input is then in
# fuzz/artifacts/batch_decode/, and the output shows how to reproduce it). docs/fuzzing.md explains each step.
set -euo pipefail

secs="${1:-60}"
if ! [[ "$secs" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [SECONDS]  (a positive whole number of seconds, default 60)" >&2
    exit 2
fi

cd "$(dirname "$0")"
targets="${2:-batch_decode request_decode segment_recovery index_read controller_command}"
# The version docs/fuzzing.md was checked with; a newer 0.x should work the same way.
cargo_fuzz_version=0.13.2

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "run.sh: installing cargo-fuzz $cargo_fuzz_version from crates.io" >&2
    cargo install cargo-fuzz --locked --version "$cargo_fuzz_version"
fi

for target in $targets; do
    # -s none: no sanitizer, so no -Zsanitizer and no nightly. The targets are safe Rust; what they look for
    # are panics (overflow checks and debug assertions are on), oracle failures, hangs and memory blow-ups.
    cargo fuzz build -s none "$target"

    # Replay inputs that failed before, so a regression fails fast and the same way every time.
    if compgen -G "regressions/$target/*" >/dev/null; then
        echo "run.sh: replaying regressions/$target/" >&2
        cargo fuzz run -s none "$target" regressions/"$target"/* -- -runs=1
    fi

    # The corpus directory gains the new inputs the run finds (commit them after `cargo fuzz cmin`).
    mkdir -p "corpus/$target"
    cargo fuzz run -s none "$target" "corpus/$target" -- \
        ${FUZZ_SEED:+-seed="$FUZZ_SEED"} \
        -max_total_time="$secs" \
        -timeout=10 \
        -rss_limit_mb=2048 \
        -print_final_stats=1
done
