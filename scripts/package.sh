#!/bin/sh
# Builds the .deb and the .rpm of thingplus-gw for one or all architectures.
#
#   scripts/package.sh [--arch amd64|arm64|armhf|all]     (default: amd64)
#
#   amd64 -> target/debian/thingplus-gw_<v>_amd64.deb, target/generate-rpm/thingplus-gw-<v>.x86_64.rpm
#   arm64 -> target/debian/thingplus-gw_<v>_arm64.deb, target/generate-rpm/thingplus-gw-<v>.aarch64.rpm
#   armhf -> target/debian/thingplus-gw_<v>_armhf.deb, target/generate-rpm/thingplus-gw-<v>.armv7hl.rpm
#
# Each package has its SBOM beside it (*.cdx.json). The binary is built once
# per architecture with cargo auditable (release, LTO, without the
# `demo` feature: the embedded broker must not ship); amd64 with the cargo
# and rustc first on PATH, arm64 and armhf with Debian's rustc and the cross
# gcc (scripts/cross-env.sh; scripts/arm-setup.sh installs them). The man
# page and shell completions are generated once, on the host, from the clap
# definition by examples/gen-docs.rs.
set -eu

cd "$(dirname "$0")/.."
. scripts/cross-env.sh

archs=amd64
while [ $# -gt 0 ]; do
	case "$1" in
	--arch)
		[ $# -ge 2 ] || { echo "error: --arch needs amd64, arm64, armhf or all" >&2; exit 2; }
		archs=$2
		shift 2
		;;
	--arch=*)
		archs=${1#--arch=}
		shift
		;;
	*)
		echo "usage: scripts/package.sh [--arch amd64|arm64|armhf|all]" >&2
		exit 2
		;;
	esac
done
[ "$archs" = all ] && archs="amd64 arm64 armhf"
for a in $archs; do arch_facts "$a"; done

need_tool() { # cargo subcommand, crate
	if ! cargo "$1" --version >/dev/null 2>&1; then
		echo "==> installing $2"
		# A debug build of the tool is plenty for packaging and builds in half the time.
		cargo install --locked --debug "$2"
	fi
}
need_tool deb cargo-deb
need_tool generate-rpm cargo-generate-rpm
# cargo auditable: embeds the crate list in the binary (`cargo audit bin`,
# scanners on the boxes, the SBOM below read it). No prebuilt release on
# PyPI; a release build is small (about 1 minute).
if ! cargo auditable --version >/dev/null 2>&1; then
	echo "==> installing cargo-auditable"
	cargo install --locked cargo-auditable@0.7.7
fi

if [ ! -f config/thingplus-gw.toml ]; then
	echo "error: config/thingplus-gw.toml (the packaged example configuration) is missing" >&2
	exit 1
fi

# The one place the shipped binary is built. $1: a Rust target triple, or
# empty for the host; the caller has set the cross environment.
build_binary() {
	if [ -n "$1" ]; then
		set -- --target "$1"
	else
		set --
	fi
	cargo auditable build --release --locked --no-default-features --bin thingplus-gw "$@"
}

echo "==> man page and completions"
cargo run --quiet --locked --no-default-features --example gen-docs -- target/docs >/dev/null
gzip -9nf target/docs/thingplus-gw.8 -c >target/docs/thingplus-gw.8.gz

for arch in $archs; do
	# A subshell per architecture: the cross environment stays inside it.
	(
		cross_env "$arch"
		echo "==> $arch: release build (no default features)${TRIPLE:+, $TRIPLE with $RUSTC}"
		build_binary "$TRIPLE"
		echo "==> $arch: .deb"
		rm -f target/debian/thingplus-gw_*_"$arch".deb
		if [ -n "$TRIPLE" ]; then
			cargo deb --no-build --locked --target "$TRIPLE" --output target/debian/
		else
			cargo deb --no-build --locked
		fi
		echo "==> $arch: .rpm"
		rm -f target/generate-rpm/thingplus-gw-*."$RPM_ARCH".rpm
		if [ -n "$TRIPLE" ]; then
			cargo generate-rpm --target "$TRIPLE" --arch "$RPM_ARCH" --output target/generate-rpm/
		else
			cargo generate-rpm
		fi
		# SBOM: CycloneDX JSON beside each package (same name, .cdx.json), read
		# from the dependency list cargo auditable embedded in the binary.
		echo "==> $arch: SBOM"
		for pkg in target/debian/thingplus-gw_*_"$arch".deb target/generate-rpm/thingplus-gw-*."$RPM_ARCH".rpm; do
			python3 scripts/sbom.py generate "$pkg" >"${pkg%.*}.cdx.json"
		done
		ls -l target/debian/thingplus-gw_*_"$arch".deb target/generate-rpm/thingplus-gw-*."$RPM_ARCH".rpm
	)
done
