#!/usr/bin/env bash
# Runs the test suite for arm64 and/or armhf: the test binaries and the
# daemon they start are ARM binaries, run by qemu-user through binfmt_misc,
# against the host's Mosquitto.
#
#   scripts/test-arm.sh [--arch arm64|armhf|all] [--subset] [-- cargo test ARGS (before its --)]
#
# --subset: the tests CI runs on ARM (login and will, values and statuses,
# RPC, outage replay with SIGKILL, serial on a pty, Modbus, the buffer
# faults, and the unit tests); without it, the whole suite.
# Sets the machine up first (scripts/arm-setup.sh; needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cross-env.sh
export CARGO_TERM_COLOR=never

archs="arm64 armhf"
subset=0
while [ $# -gt 0 ]; do
	case "$1" in
	--arch) archs=$2; shift 2 ;;
	--arch=*) archs=${1#--arch=}; shift ;;
	--subset) subset=1; shift ;;
	--) shift; break ;;
	*) echo "usage: scripts/test-arm.sh [--arch arm64|armhf|all] [--subset] [-- ARGS]" >&2; exit 2 ;;
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
sel=()
[ "$subset" = 1 ] && sel=("${SUBSET[@]}")

scripts/arm-setup.sh
for arch in $archs; do
	(
		cross_env "$arch"
		[ -n "$TRIPLE" ] || { echo "error: $arch is not an ARM architecture" >&2; exit 2; }
		t0=$(date +%s)
		echo "== $arch: building the test binaries ($TRIPLE, $RUSTC)"
		cargo test --locked --no-run --target "$TRIPLE" "${sel[@]}"
		t1=$(date +%s)
		echo "== $arch: running them under $(qemu-"${GNU%%-*}"-static --version 2>/dev/null | head -n1 || echo qemu-user)"
		# qemu-user runs vfork as fork, so glibc's posix_spawn cannot report
		# an exec failure: the child exits 127 instead (README, "Run the tests").
		scripts/test.sh --locked --target "$TRIPLE" "${sel[@]}" "$@" -- --skip rpc::tests::sw_update_outcomes
		t2=$(date +%s)
		echo "== $arch: tests passed (build $((t1 - t0)) s, run $((t2 - t1)) s)"
	)
done
