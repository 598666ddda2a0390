#!/bin/sh
# Builds the .deb and the .rpm of thingplus-gw on this machine.
#
#   scripts/package.sh            -> target/debian/*.deb, target/generate-rpm/*.rpm,
#                                    each with its SBOM beside it (*.cdx.json)
#
# The binary is built once with cargo auditable (release, LTO, without the
# `demo` feature: the embedded broker must not ship); the man page and shell
# completions are generated from the clap definition by examples/gen-docs.rs.
set -eu

cd "$(dirname "$0")/.."

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

echo "==> release build (no default features)"
cargo auditable build --release --locked --no-default-features --bin thingplus-gw

echo "==> man page and completions"
cargo run --quiet --locked --no-default-features --example gen-docs -- target/docs >/dev/null
gzip -9nf target/docs/thingplus-gw.8 -c >target/docs/thingplus-gw.8.gz

echo "==> .deb"
rm -f target/debian/thingplus-gw_*.deb
cargo deb --no-build --locked
echo "==> .rpm"
rm -f target/generate-rpm/thingplus-gw-*.rpm
cargo generate-rpm

# SBOM: CycloneDX JSON beside each package (same name, .cdx.json), read from
# the dependency list that cargo auditable embedded in the packaged binary.
echo "==> SBOM"
for pkg in target/debian/thingplus-gw_*.deb target/generate-rpm/thingplus-gw-*.rpm; do
	python3 scripts/sbom.py generate "$pkg" >"${pkg%.*}.cdx.json"
done

ls -l target/debian/thingplus-gw_*.deb target/generate-rpm/thingplus-gw-*.rpm
