#!/usr/bin/env bash
# Runs the test suite for arm64 and/or armhf: the test binaries and the
# daemon they start are ARM binaries, run by qemu-user through binfmt_misc,
# against the host's Mosquitto.
#
#   scripts/test-arm.sh [--arch arm64|armhf|all] [--subset[=small]] [-- cargo test ARGS (before its --)]
#
# Everything is built with the packages' features (--no-default-features):
# without the embedded demo broker, which the packages leave out, so
# tests/demo.rs is the one test file that does not run on ARM (it tests
# `thingplus-gw demo`); the builds of the subsets and of the whole suite
# share their dependencies.
# Without --subset: the whole suite.
# --subset: what CI runs on armhf: login and will, values and statuses, RPC,
# outage replay with SIGKILL, serial on a pty, Modbus, the buffer faults and
# the unit tests.
# --subset=small: what CI runs on arm64: the unit tests, the daemon tests
# and the outage replay (64-bit like amd64; the word-size faults live on
# armhf, which runs the full subset).
# Builds with the cross-test profile (Cargo.toml: no debug information, no
# incremental state). Sets the machine up first (scripts/arm-setup.sh; root).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cross-env.sh
export CARGO_TERM_COLOR=never

archs="arm64 armhf"
subset=
while [ $# -gt 0 ]; do
	case "$1" in
	--arch) archs=$2; shift 2 ;;
	--arch=*) archs=${1#--arch=}; shift ;;
	--subset) subset=full; shift ;;
	--subset=full | --subset=small) subset=${1#--subset=}; shift ;;
	--) shift; break ;;
	*) echo "usage: scripts/test-arm.sh [--arch arm64|armhf|all] [--subset[=small]] [-- ARGS]" >&2; exit 2 ;;
	esac
done
[ "$archs" = all ] && archs="arm64 armhf"

# One test target per area the ARM builds must prove.
SUBSET=(
	--lib                  # codec, buffer store, config, payloads, the pure session state machine
	--test daemon          # login, will after SIGKILL, values, statuses, RPC commands, TLS
	--test status          # statuses online, failing sensor, offline backlog
	--test buffer_e2e      # outage replay with two SIGKILLs, order kept
	--test buffer_faults   # corrupt, truncated, WAL loss, size bound, disk full, schema upgrade
	--test serial_lines    # NMEA/CSV/JSON/regex ports on a pty
	--test serial_modbus   # Modbus RTU on a pty
	--test serial_e2e      # serial and Modbus readings to the cloud
)
SMALL_SUBSET=(--lib --test daemon --test buffer_e2e)
sel=(--no-default-features)
case "$subset" in
full) sel+=("${SUBSET[@]}") ;;
small) sel+=("${SMALL_SUBSET[@]}") ;;
esac

scripts/arm-setup.sh
for arch in $archs; do
	(
		cross_env "$arch"
		[ -n "$TRIPLE" ] || { echo "error: $arch is not an ARM architecture" >&2; exit 2; }
		t0=$(date +%s)
		echo "== $arch: building the test binaries ($TRIPLE, $RUSTC, profile cross-test${subset:+, $subset subset})"
		cargo test --locked --profile cross-test --no-run --target "$TRIPLE" "${sel[@]}" "$@"
		t1=$(date +%s)
		echo "== $arch: built in $((t1 - t0)) s; running them under $(qemu-"${GNU%%-*}"-static --version 2>/dev/null | head -n1 || echo qemu-user)"
		# qemu-user runs vfork as fork, so glibc's posix_spawn cannot report
		# an exec failure: the child exits 127 instead (README, "Run the tests").
		# --no-fail-fast: one slow emulated run reports every failing test file.
		scripts/test.sh --locked --profile cross-test --no-fail-fast --target "$TRIPLE" "${sel[@]}" "$@" -- --skip rpc::tests::sw_update_outcomes
		t2=$(date +%s)
		echo "== $arch: tests passed (build $((t1 - t0)) s, run $((t2 - t1)) s)"
	)
done
