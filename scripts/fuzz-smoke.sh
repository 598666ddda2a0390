#!/usr/bin/env bash
# CI smoke run of the fuzz targets (fuzz/README.md has the long runs): builds
# every target and runs each for a few seconds from its seeds. Fails on any
# crash, hang (> 10 s for one input) or allocation over the limits.
#
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 lets the stable
# toolchain accept them. Debug build without a sanitizer: it compiles in a
# fraction of the time of the optimised ASan build used for the long runs,
# and a smoke run needs coverage feedback, not speed.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export RUSTC_BOOTSTRAP=1 CARGO_TERM_COLOR=never
SECONDS_PER_TARGET="${FUZZ_SMOKE_SECONDS:-5}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz (about a minute)..." >&2
  cargo install cargo-fuzz --locked
fi

# FUZZ_TARGET_DIR: another build directory than fuzz/target (measurements).
opts=(--dev -s none)
if [ -n "${FUZZ_TARGET_DIR:-}" ]; then opts+=(--target-dir "$FUZZ_TARGET_DIR"); fi
cargo fuzz build "${opts[@]}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=0 passed=0
for t in $(cargo fuzz list); do
  mkdir -p "$work/$t" "artifacts/$t"
  # New inputs go to the scratch corpus, never into the checked-in seeds.
  if cargo fuzz run "${opts[@]}" "$t" "$work/$t" "seeds/$t" -- \
      -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=1024 \
      -print_final_stats=1 >"$work/$t.log" 2>&1; then
    runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$work/$t.log" | grep -oE '[0-9]+$' || echo "?")
    echo "fuzz smoke: $t ok ($runs executions in ${SECONDS_PER_TARGET}s)"
    passed=$((passed + 1))
  else
    echo "fuzz smoke: $t FAILED; input saved under fuzz/artifacts/$t:" >&2
    tail -n 40 "$work/$t.log" >&2
    failed=$((failed + 1))
  fi
done
echo "fuzz-smoke: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
