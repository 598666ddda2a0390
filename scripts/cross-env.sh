# Sourced by scripts/package.sh and scripts/test-arm.sh: what cargo needs to
# build for one Debian architecture.
#
#   arch_facts ARCH    sets TRIPLE (empty for amd64: the host build),
#                      RPM_ARCH and GNU (the cross compiler's prefix)
#   cross_env ARCH     exports Debian's rustc and the cross C toolchain
#
# amd64 is built by whatever `cargo`/`rustc` come first on PATH (rustup's
# stable); arm64 and armhf by Debian's rustc (rustc-web), the only one with
# the standard library for those targets (libstd-rust-web-dev:arm64/armhf).
# ring and the bundled SQLite are C: they build with the cross gcc.

arch_facts() {
	case "$1" in
	amd64) TRIPLE= RPM_ARCH=x86_64 GNU= ;;
	arm64) TRIPLE=aarch64-unknown-linux-gnu RPM_ARCH=aarch64 GNU=aarch64-linux-gnu ;;
	armhf) TRIPLE=armv7-unknown-linux-gnueabihf RPM_ARCH=armv7hl GNU=arm-linux-gnueabihf ;;
	*)
		echo "error: unknown architecture '$1' (amd64, arm64 or armhf)" >&2
		return 1
		;;
	esac
}

cross_env() {
	arch_facts "$1" || return 1
	[ -n "$TRIPLE" ] || return 0
	for tool in /usr/bin/rustc "$GNU-gcc" "$GNU-ar"; do
		if ! command -v "$tool" >/dev/null; then
			echo "error: $tool is missing: run scripts/arm-setup.sh (installs the $1 toolchain)" >&2
			return 1
		fi
	done
	if [ ! -d "/usr/lib/rustlib/$TRIPLE" ]; then
		echo "error: no Rust standard library for $TRIPLE: run scripts/arm-setup.sh (libstd-rust-web-dev:$1)" >&2
		return 1
	fi
	upper=$(echo "$TRIPLE" | tr 'a-z-' 'A-Z_')
	lower=$(echo "$TRIPLE" | tr '-' '_')
	# rustup's shims come first on PATH; its toolchains cannot add targets here.
	export RUSTC=/usr/bin/rustc
	# The doctests of the whole suite need the rustdoc of that same toolchain
	# (rustup's cannot find the target's standard library: E0463).
	export RUSTDOC=/usr/bin/rustdoc
	export "CARGO_TARGET_${upper}_LINKER=$GNU-gcc"
	export "CC_${lower}=$GNU-gcc"
	export "AR_${lower}=$GNU-ar"
}
