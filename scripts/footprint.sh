#!/usr/bin/env bash
# Size and memory of the packaged binary per architecture: the stripped
# binary's size, and the RSS after SECS seconds (default 60) with 50 file
# sensors at 1 s, connected to a local Mosquitto. The ARM binaries run under
# qemu-user (binfmt), whose RSS includes the emulator and its translation
# cache: indicative only. Needs the binaries scripts/package.sh builds.
#
#   scripts/footprint.sh [--arch amd64|arm64|armhf|all] [SECS]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cross-env.sh

archs="amd64 arm64 armhf"
secs=60
while [ $# -gt 0 ]; do
	case "$1" in
	--arch) archs=$2; shift 2 ;;
	--arch=*) archs=${1#--arch=}; shift ;;
	*) secs=$1; shift ;;
	esac
done
[ "$archs" = all ] && archs="amd64 arm64 armhf"

work=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest none\n' "$port" >"$work/mosquitto.conf"
/usr/sbin/mosquitto -c "$work/mosquitto.conf" &
pids+=($!)

echo "| Architecture | Stripped binary | RSS after ${secs} s, 50 file sensors at 1 s, connected |"
echo "|---|---|---|"
for arch in $archs; do
	arch_facts "$arch"
	bin=target/${TRIPLE:+$TRIPLE/}release/thingplus-gw
	[ -x "$bin" ] || { echo "error: $bin is missing: scripts/package.sh --arch $arch" >&2; exit 1; }
	d="$work/$arch"
	mkdir -p "$d/values" "$d/run"
	{
		printf '[gateway]\nid = "gw-footprint"\napikey = "footprint-key"\nreport_interval = "10s"\nstate_dir = "%s"\n\n' "$d/state"
		printf '[mqtt]\nhost = "127.0.0.1"\nport = %s\ntls = false\nreconnect_min = "1s"\nreconnect_max = "2s"\n\n' "$port"
		printf '[buffer]\ndir = "%s"\n\n' "$d/buffer"
		for i in $(seq 0 49); do
			echo $((20000 + i * 37)) >"$d/values/temp$i"
			printf '[[sensor]]\nid = "gw-footprint-temperature-%s"\ntype = "temperature"\npath = "%s"\nscale = 0.001\ninterval = "1s"\n\n' "$i" "$d/values/temp$i"
		done
	} >"$d/config.toml"
	chmod 600 "$d/config.toml"
	RUNTIME_DIRECTORY="$d/run" "$bin" run --config "$d/config.toml" 2>"$d/daemon.log" &
	pid=$!
	pids+=("$pid")
	sleep "$secs"
	kill -0 "$pid" 2>/dev/null || { cat "$d/daemon.log" >&2; echo "error: the $arch daemon exited" >&2; exit 1; }
	grep -q 'connected' "$d/daemon.log" || { cat "$d/daemon.log" >&2; echo "error: the $arch daemon did not connect" >&2; exit 1; }
	rss=$(awk '/^VmRSS:/ {printf "%.1f MiB", $2 / 1024}' "/proc/$pid/status")
	size=$(stat -c %s "$bin" | awk '{printf "%.2f MiB", $1 / 1048576}')
	kill "$pid"
	wait "$pid" 2>/dev/null || true
	note=""
	[ "$arch" = amd64 ] || note=" (under qemu-user: indicative)"
	echo "| $arch | $size | $rss$note |"
done
