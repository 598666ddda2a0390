#!/usr/bin/env bash
# Package tests: builds the .deb and .rpm (scripts/package.sh), then
#  - for each architecture asked for (--arch amd64|arm64|armhf|all, default
#    amd64; --no-build checks the packages already built instead of
#    running scripts/package.sh first): lintian on the .deb (no error),
#    `file` on the binary inside each package (the right machine),
#    rpm -qlvp / --scripts (expected
#    files, owners, modes and scriptlets), the same file list in both;
#  - for amd64 only (the contents and scriptlets are the same for all):
#    installs the .deb into a throwaway Debian root (debootstrap minbase,
#    cached in target/pkgtest/): files, owners and modes, the system user,
#    the unit enabled, conffile kept on upgrade, remove keeps data, purge
#    cleans up;
#  - systemd-analyze verify on the unit and the exposure score of
#    systemd-analyze security --offline=true (must be <= 2.0).
# Needs root (chroot) and Debian's archive (apt sources) for debootstrap.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cross-env.sh
export CARGO_TERM_COLOR=never
start=$(date +%s)

archs=amd64
build=1
while [ $# -gt 0 ]; do
	case "$1" in
	--arch) archs=$2; shift 2 ;;
	--arch=*) archs=${1#--arch=}; shift ;;
	# The packages scripts/package.sh built already: checked as they are.
	--no-build) build=0; shift ;;
	*) echo "usage: scripts/test-packages.sh [--arch amd64|arm64|armhf|all] [--no-build]" >&2; exit 2 ;;
	esac
done
[ "$archs" = all ] && archs="amd64 arm64 armhf"

fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

need=()
command -v lintian >/dev/null || need+=(lintian)
command -v rpm >/dev/null || need+=(rpm)
command -v file >/dev/null || need+=(file)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-analyze >/dev/null || need+=(systemd)
if [ ${#need[@]} -gt 0 ]; then
	echo "== installing ${need[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ "$build" = 1 ]; then
	echo "== build ($archs)"
	for a in $archs; do
		[ "$a" = amd64 ] || { scripts/arm-setup.sh; break; }
	done
	if [ "$archs" = "amd64 arm64 armhf" ]; then
		scripts/package.sh --arch all
	else
		for a in $archs; do scripts/package.sh --arch "$a"; done
	fi
fi
work=target/pkgtest
mkdir -p "$work"

# What `file` says of each architecture's binary.
machine() {
	case "$1" in
	amd64) echo 'ELF 64-bit LSB pie executable, x86-64' ;;
	arm64) echo 'ELF 64-bit LSB pie executable, ARM aarch64' ;;
	armhf) echo 'ELF 32-bit LSB pie executable, ARM, EABI5' ;;
	esac
}

static_checks() { # ARCH: lintian, rpm metadata, the binary's machine
	local arch=$1 deb rpmf w
	arch_facts "$arch"
	deb=$(ls target/debian/thingplus-gw_*_"$arch".deb)
	rpmf=$(ls target/generate-rpm/thingplus-gw-*."$RPM_ARCH".rpm)
	w="$work/$arch"
	rm -rf "$w"
	mkdir -p "$w"

	echo "== $arch: lintian"
	lintian --tag-display-limit 0 "$deb" 2>&1 | grep -v 'running with root privileges' | tee "$w/lintian.txt" || true
	if grep -q '^E:' "$w/lintian.txt"; then fail "$arch: lintian reports errors"; fi
	ok "$arch: lintian: no errors ($(grep -c '^W:' "$w/lintian.txt" || true) warnings)"
	[ "$(dpkg-deb -f "$deb" Architecture)" = "$arch" ] || fail "$deb: Architecture is $(dpkg-deb -f "$deb" Architecture)"

	echo "== $arch: the binary's machine"
	mkdir -p "$w/deb"
	dpkg-deb -x "$deb" "$w/deb"
	f="$w/deb/usr/bin/thingplus-gw"
	file -b "$f" | tee "$w/file.txt"
	grep -qF "$(machine "$arch")" "$w/file.txt" || fail "$f is not $(machine "$arch")"
	grep -q 'stripped' "$w/file.txt" && ! grep -q 'not stripped' "$w/file.txt" || fail "$f is not stripped"
	# The .rpm carries the same bytes: its digest of the binary is the .deb's.
	rpm_sum=$(rpm -qp --dump "$rpmf" | awk '$1 == "/usr/bin/thingplus-gw" {print $4}')
	[ "$rpm_sum" = "$(sha256sum "$f" | cut -d' ' -f1)" ] || fail "$arch: the .rpm's binary is not the .deb's"
	ok "$arch: both packages carry the same stripped $(machine "$arch") binary"
	rpm -qp --qf '%{ARCH}\n' "$rpmf" | grep -qx "$RPM_ARCH" || fail "$rpmf: rpm arch is $(rpm -qp --qf '%{ARCH}' "$rpmf")"

	echo "== $arch: rpm"
	rpm -qlvp "$rpmf" | tee "$w/rpm-files.txt"
	for f in /usr/bin/thingplus-gw /usr/lib/systemd/system/thingplus-gw.service \
		/etc/thingplus-gw/config.toml /usr/lib/sysusers.d/thingplus-gw.conf \
		/usr/share/man/man8/thingplus-gw.8.gz /usr/share/bash-completion/completions/thingplus-gw \
		/usr/share/zsh/site-functions/_thingplus-gw /usr/share/fish/vendor_completions.d/thingplus-gw.fish; do
		grep -q " $f\$" "$w/rpm-files.txt" || fail "$arch: rpm lacks $f"
	done
	grep -E '^-rw-r----- .* root +thingplus-gw? .*/etc/thingplus-gw/config.toml$|^-rw-r----- .* root +thingplu .*/etc/thingplus-gw/config.toml$' "$w/rpm-files.txt" >/dev/null \
		|| fail "$arch: rpm: config.toml is not root:thingplus-gw 0640"
	rpm -qp --configfiles "$rpmf" | grep -qx /etc/thingplus-gw/config.toml || fail "$arch: rpm: config.toml is not %config"
	rpm -qp --dump "$rpmf" | awk '$1 == "/etc/thingplus-gw/config.toml"' | tee "$w/rpm-dump.txt"
	rpm -qp --scripts "$rpmf" >"$w/rpm-scripts.txt"
	for s in 'preinstall scriptlet' 'useradd -r -g thingplus-gw' 'postinstall scriptlet' \
		'systemctl --no-reload enable thingplus-gw.service' 'preuninstall scriptlet' \
		'disable --now thingplus-gw.service' 'postuninstall scriptlet' 'try-restart thingplus-gw.service'; do
		grep -qF -- "$s" "$w/rpm-scripts.txt" || fail "$arch: rpm scriptlets lack: $s"
	done
	if rpm -qpR "$rpmf" | grep -q adduser; then fail "$arch: rpm requires adduser"; fi
	ok "$arch: rpm: files, owner and mode of the config, %config, scriptlets"

	# The other architectures' packages must match amd64's, file for file
	# (modes, owners, sizes apart from the binary) and script for script.
	dpkg-deb -c "$deb" | awk '{print $1, $2, $6}' | sort -k3 >"$w/deb-list.txt"
	tar -xOf <(dpkg-deb --ctrl-tarfile "$deb") ./postinst ./prerm ./postrm ./preinst 2>/dev/null >"$w/deb-scripts.txt" || true
	awk '{print $1, $3, $4, $NF}' "$w/rpm-files.txt" | sort -k4 >"$w/rpm-list.txt"
	if [ "$arch" != amd64 ] && [ -f "$work/amd64/deb-list.txt" ]; then
		diff -u "$work/amd64/deb-list.txt" "$w/deb-list.txt" || fail "$arch: the .deb's files differ from amd64's"
		diff -u "$work/amd64/deb-scripts.txt" "$w/deb-scripts.txt" || fail "$arch: the .deb's maintainer scripts differ from amd64's"
		diff -u "$work/amd64/rpm-list.txt" "$w/rpm-list.txt" || fail "$arch: the .rpm's files differ from amd64's"
		diff -u "$work/amd64/rpm-scripts.txt" "$w/rpm-scripts.txt" || fail "$arch: the .rpm's scriptlets differ from amd64's"
		ok "$arch: same files, modes, owners and scripts as amd64"
	fi
}

for a in $archs; do static_checks "$a"; done
case " $archs " in
*" amd64 "*) ;;
*)
	echo "package static checks passed ($archs) in $(( $(date +%s) - start )) s; install tests run for amd64 only"
	exit 0
	;;
esac
deb=$(ls target/debian/thingplus-gw_*_amd64.deb)

echo "== Debian root"
seed="$work/rootfs-seed"
if [ ! -x "$seed/bin/sh" ]; then
	mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)
	mirror=${mirror:-http://deb.debian.org/debian}
	rm -rf "$seed"
	# systemd: for systemd-sysusers and for `systemd-analyze verify --root`;
	# procps: /bin/kill of ExecReload=.
	debootstrap --variant=minbase --include=systemd,procps bookworm "$seed" "$mirror" >"$work/debootstrap.log" 2>&1 \
		|| { tail -n 20 "$work/debootstrap.log"; fail "debootstrap"; }
fi
root="$work/root"
rm -rf "$root"
cp -a "$seed" "$root"
cp "$deb" "$root/tmp/pkg.deb"
in_root() { chroot "$root" "$@"; }
if in_root dpkg -s adduser >/dev/null 2>&1; then
	# Prove no hard dependency on adduser: remove it from the root first.
	in_root dpkg --purge --force-depends adduser >/dev/null 2>&1 || true
fi

# First without systemd-sysusers (a container, a chroot): the useradd path.
mv "$root/usr/bin/systemd-sysusers" "$root/usr/bin/systemd-sysusers.off"
in_root dpkg -i /tmp/pkg.deb >"$work/install.log" 2>&1 || { cat "$work/install.log"; fail "dpkg -i"; }
cat "$work/install.log"
mode_owner() { in_root stat -c '%a %U:%G' "$1"; }
[ "$(mode_owner /usr/bin/thingplus-gw)" = "755 root:root" ] || fail "binary: $(mode_owner /usr/bin/thingplus-gw)"
[ "$(mode_owner /etc/thingplus-gw/config.toml)" = "640 root:thingplus-gw" ] || fail "config: $(mode_owner /etc/thingplus-gw/config.toml)"
[ "$(mode_owner /var/lib/thingplus-gw)" = "750 thingplus-gw:thingplus-gw" ] || fail "state dir: $(mode_owner /var/lib/thingplus-gw)"
for f in /usr/lib/systemd/system/thingplus-gw.service /usr/lib/sysusers.d/thingplus-gw.conf \
	/usr/lib/udev/rules.d/60-thingplus-gw.rules /usr/share/man/man8/thingplus-gw.8.gz \
	/usr/share/bash-completion/completions/thingplus-gw /usr/share/zsh/vendor-completions/_thingplus-gw \
	/usr/share/fish/vendor_completions.d/thingplus-gw.fish; do
	[ "$(mode_owner "$f")" = "644 root:root" ] || fail "$f: $(mode_owner "$f")"
done
user=$(in_root getent passwd thingplus-gw) || fail "no user thingplus-gw"
uid=$(echo "$user" | cut -d: -f3)
[ "$uid" -lt 1000 ] || fail "thingplus-gw is not a system user: $user"
in_root getent group thingplus-gw >/dev/null || fail "no group thingplus-gw"
in_root getent group gpio >/dev/null || fail "no group gpio (GPIO chips and lines, SupplementaryGroups=gpio)"
case "$user" in *nologin) ;; *) fail "login shell: $user" ;; esac
grep -qx /etc/thingplus-gw/config.toml "$root/var/lib/dpkg/info/thingplus-gw.conffiles" || fail "config.toml is not a conffile"
in_root thingplus-gw --version | grep -q '^thingplus-gw ' || fail "binary does not run"
if in_root thingplus-gw demo --help >/dev/null 2>&1; then fail "the packaged binary has the demo command"; fi
set +e
in_root thingplus-gw check >/dev/null 2>&1
rc=$?
set -e
[ "$rc" = 78 ] || fail "unconfigured check exits $rc, expected 78"
if [ -x "$root/usr/bin/deb-systemd-helper" ]; then
	[ -L "$root/etc/systemd/system/multi-user.target.wants/thingplus-gw.service" ] || fail "unit not enabled"
	ok "unit enabled (multi-user.target.wants)"
else
	echo "note: no init-system-helpers in this root: enabling is left to systemctl on a real system"
fi
ok "install: files, owners, modes, user $user, conffile"

echo "== upgrade keeps the operator's config"
echo '# operator edit' >>"$root/etc/thingplus-gw/config.toml"
echo 'queued' >"$root/var/lib/thingplus-gw/marker"
ver=$(dpkg-deb -f "$deb" Version)
up_ver="${ver%-*}.1-1"
# cargo deb deletes the .deb files in target/debian, whatever --output says:
# keep the tested one there for scripts/supply-chain.sh --packages.
cp "$deb" "$work/tested.deb"
cargo deb --no-build --locked --deb-version "$up_ver" --output "$work/upgrade.deb" >/dev/null
cp "$work/tested.deb" "$deb"
cp "$work/upgrade.deb" "$root/tmp/upgrade.deb"
in_root dpkg -i --force-confold /tmp/upgrade.deb >"$work/upgrade.log" 2>&1 || { cat "$work/upgrade.log"; fail "upgrade"; }
in_root dpkg-query -W -f '${Version}' thingplus-gw | grep -qx "$up_ver" || fail "not upgraded"
grep -q '^# operator edit' "$root/etc/thingplus-gw/config.toml" || fail "upgrade lost the operator's config"
[ "$(mode_owner /etc/thingplus-gw/config.toml)" = "640 root:thingplus-gw" ] || fail "config after upgrade: $(mode_owner /etc/thingplus-gw/config.toml)"
[ -f "$root/var/lib/thingplus-gw/marker" ] || fail "upgrade lost state"
ok "upgrade $ver -> $up_ver: config and state kept"

echo "== remove keeps config and data, purge cleans up"
in_root dpkg -r thingplus-gw >/dev/null
[ ! -e "$root/usr/bin/thingplus-gw" ] || fail "binary left after remove"
[ -f "$root/etc/thingplus-gw/config.toml" ] || fail "remove deleted the config"
[ -f "$root/var/lib/thingplus-gw/marker" ] || fail "remove deleted the data"
in_root dpkg -P thingplus-gw >/dev/null
[ ! -e "$root/etc/thingplus-gw" ] || fail "purge left /etc/thingplus-gw"
[ ! -e "$root/var/lib/thingplus-gw" ] || fail "purge left /var/lib/thingplus-gw"
if in_root dpkg-statoverride --list | grep -q thingplus-gw; then fail "purge left a stat override"; fi
[ ! -e "$root/etc/systemd/system/multi-user.target.wants/thingplus-gw.service" ] || fail "purge left the unit enabled"
if in_root getent passwd thingplus-gw >/dev/null; then fail "purge left the user thingplus-gw"; fi
if in_root getent group thingplus-gw >/dev/null; then fail "purge left the group thingplus-gw"; fi
ok "remove and purge"

echo "== install again, the account made by systemd-sysusers this time"
mv "$root/usr/bin/systemd-sysusers.off" "$root/usr/bin/systemd-sysusers"
in_root dpkg -i /tmp/pkg.deb >"$work/install2.log" 2>&1 || { cat "$work/install2.log"; fail "dpkg -i (sysusers)"; }
in_root getent passwd thingplus-gw || fail "systemd-sysusers made no user"
[ "$(mode_owner /etc/thingplus-gw/config.toml)" = "640 root:thingplus-gw" ] || fail "config: $(mode_owner /etc/thingplus-gw/config.toml)"
in_root getent group gpio >/dev/null || fail "systemd-sysusers made no group gpio"
ok "install with systemd-sysusers"

echo "== systemd-analyze"
# Verified inside the installed root, where ExecStart and the targets exist.
systemd-analyze verify --man=no --root="$root" /usr/lib/systemd/system/thingplus-gw.service 2>&1 | tee "$work/verify.txt"
if [ -s "$work/verify.txt" ]; then fail "systemd-analyze verify complained"; fi
ok "systemd-analyze verify"
systemd-analyze security --offline=true systemd/thingplus-gw.service | tail -n 1
systemd-analyze security --offline=true --threshold=20 systemd/thingplus-gw.service >/dev/null \
	|| fail "exposure above 2.0"
ok "exposure <= 2.0"

rm -rf "$root"
echo "package tests passed in $(( $(date +%s) - start )) s"
