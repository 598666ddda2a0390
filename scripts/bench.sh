#!/usr/bin/env bash
# The benchmark suite (issue 8): builds the packaged binary, measures it
# against baselines taken in the same run, and writes the Markdown report to
# target/bench/report.md (also printed).
#
#   scripts/bench.sh                 # everything, about 8 minutes once built
#   BENCH_SECS=10 scripts/bench.sh   # shorter steady-state windows (a quick look)
#
# Needs Mosquitto and mosquitto-clients (scripts/test.sh installs them),
# valgrind for the instruction counts (skipped without it). Not part of CI:
# it takes minutes and its figures depend on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

out=target/bench
mkdir -p "$out"
rm -f "$out"/*.md

echo "== building the packaged binary (cargo build --release --no-default-features)" >&2
cargo build --release --no-default-features
# `cargo bench` links its own (unstripped, non-LTO) thingplus-gw over
# target/release/thingplus-gw: measure a copy of the packaged one.
bin="$PWD/$out/thingplus-gw"
cp target/release/thingplus-gw "$bin"

echo "== building the benchmarks" >&2
benches=(gateway)
[ -f benches/hotpath.rs ] && benches+=(hotpath)
[ -f benches/buffer.rs ] && benches+=(buffer)
bench_args=()
for b in "${benches[@]}"; do bench_args+=(--bench "$b"); done
cargo bench --no-default-features "${bench_args[@]}" --no-run

start=$(date +%s)

echo "== gateway: binary size, memory, CPU, throughput, latency, start-up" >&2
THINGPLUS_GW_BIN="$bin" BENCH_OUT="$out/gateway.md" \
  cargo bench --no-default-features --bench gateway >/dev/null

if [ -f benches/hotpath.rs ]; then
  echo "== hot paths: instructions per reading (callgrind)" >&2
  cargo bench --no-default-features --bench hotpath -- --report "$out/hotpath.md" >/dev/null
fi

if [ -f benches/buffer.rs ]; then
  echo "== buffer: append and drain rates (benches/buffer.rs)" >&2
  cargo bench --no-default-features --bench buffer >"$out/buffer.md"
fi

elapsed=$(( $(date +%s) - start ))
{
  echo "# thingplus-gw benchmark report"
  echo
  echo "- commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src benches Cargo.toml Cargo.lock || echo ' (with local changes)')"
  echo "- date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "- machine: $(nproc) CPU ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), Linux $(uname -r)"
  echo "- binary: \`cargo build --release --no-default-features\` ($(rustc --version))"
  echo "- measurements took ${elapsed} s (\`BENCH_SECS=${BENCH_SECS:-60}\`)"
  echo
  echo "## Gateway"
  echo
  cat "$out/gateway.md"
  if [ -f "$out/hotpath.md" ]; then
    echo
    echo "## Hot paths"
    echo
    cat "$out/hotpath.md"
  fi
  echo
  echo "## Buffer"
  echo
  if [ -f "$out/buffer.md" ]; then
    # The buffer benchmark prints its own headings; nest them under this one.
    sed 's/^#/##/' "$out/buffer.md"
  else
    echo "Append and drain rates come from \`benches/buffer.rs\` (the SQLite buffer's"
    echo "benchmark), which is not on this branch yet: no buffer figures in this report."
  fi
} >"$out/report.md"

cat "$out/report.md"
