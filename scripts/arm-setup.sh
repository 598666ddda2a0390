#!/usr/bin/env bash
# Sets a Debian 12 amd64 machine up to build, run and package arm64 and
# armhf thingplus-gw; safe to run again (it only adds what is missing).
#  - the arm64 and armhf dpkg architectures;
#  - Debian's Rust (rustc-web) with the standard library of both targets,
#    the cross C compilers (ring and the bundled SQLite are C), the targets'
#    C library (the dynamic loader that emulated binaries need) and qemu-user;
#  - binfmt_misc entries for qemu-aarch64 and qemu-arm, so that an ARM
#    binary runs like a native one (a test binary can spawn an ARM daemon).
# Needs root.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
	echo "error: scripts/arm-setup.sh needs root (dpkg, apt-get, binfmt_misc)" >&2
	exit 1
fi

added_arch=0
for a in arm64 armhf; do
	if ! dpkg --print-foreign-architectures | grep -qx "$a"; then
		dpkg --add-architecture "$a"
		added_arch=1
	fi
done

pkgs=(rustc-web cargo-web gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf qemu-user-static file
	libstd-rust-web-dev:arm64 libstd-rust-web-dev:armhf libc6:arm64 libc6:armhf libgcc-s1:arm64 libgcc-s1:armhf)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "== installing ${missing[*]}"
	apt-get update -qq -o DPkg::Lock::Timeout=600
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		-o DPkg::Lock::Timeout=600 "${missing[@]}" >/dev/null
elif [ "$added_arch" = 1 ]; then
	apt-get update -qq -o DPkg::Lock::Timeout=600
fi

# The standard library must match Debian's rustc exactly.
host_ver=$(dpkg-query -W -f '${Version}' rustc-web)
for a in arm64 armhf; do
	v=$(dpkg-query -W -f '${Version}' "libstd-rust-web-dev:$a")
	[ "$v" = "$host_ver" ] || {
		echo "error: libstd-rust-web-dev:$a is $v but rustc-web is $host_ver: apt-get install libstd-rust-web-dev:$a=$host_ver" >&2
		exit 1
	}
done

binfmt=/proc/sys/fs/binfmt_misc
if ! mountpoint -q "$binfmt"; then
	mount -t binfmt_misc binfmt_misc "$binfmt"
fi
for q in aarch64 arm; do
	if [ -e "$binfmt/qemu-$q" ]; then
		grep -qx enabled "$binfmt/qemu-$q" || echo 1 >"$binfmt/qemu-$q"
		continue
	fi
	grep -v '^#' "/usr/lib/binfmt.d/qemu-$q.conf" | grep . >"$binfmt/register"
done
for q in aarch64 arm; do
	grep -qx enabled "$binfmt/qemu-$q" || { echo "error: binfmt entry qemu-$q is not enabled" >&2; exit 1; }
done
echo "arm setup: $(/usr/bin/rustc --version) with $(ls /usr/lib/rustlib | grep -c linux) targets; $(qemu-aarch64-static --version | head -n1); binfmt qemu-aarch64, qemu-arm enabled"
