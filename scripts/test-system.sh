#!/usr/bin/env bash
# System test: the packaged service under a real systemd (PID 1 of a booted
# Debian root in systemd-nspawn), driven as an operator drives it: apt,
# systemctl, journalctl, the config file. A Mosquitto started here on the
# host's 127.0.0.1 plays Thing+ (the container shares the host's network).
#
#   1. apt install ./thingplus-gw_*.deb, APIKEY and config as README says,
#      `thingplus-gw check`, systemctl start: retained `on`, statuses, values;
#      ActiveState, StatusText, the watchdog interval
#   2. journalctl: SENSOR_ID= filter, -p warning, what each short line says
#   3. systemctl reload: a broken file refused (reason in status and journal),
#      a good one applied
#   4. kill -9 (restart, the backlog arrives in order), kill -STOP (watchdog),
#      a config error (exit 78, no restart loop), systemctl stop (`off`)
#   5. the sandbox at run time: writes outside its paths and a syscall
#      outside its filter refused, serial on a dialout pty, LED, GPIO value
#      file, exec actuator, groups and device rules, systemd-analyze security
#   6. upgrade from the previous version with a backlog; remove; purge
#   7. the .rpm with Debian's rpm in a booted root
#
# Needs root, systemd-container, debootstrap (Debian's archive), mosquitto,
# mosquitto-clients, jq; installs what is missing. The Debian root is cached
# in target/systest/. Test-only unit drop-ins are listed in packaging/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
start=$(date +%s)
top=$PWD
work=$top/target/systest
mkdir -p "$work"

fail() {
	echo "FAIL: $*" >&2
	exit 1
}
ok() { echo "ok: $*"; }
step() { echo "== [$(($(date +%s) - start)) s] $*"; }

need=()
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_sub >/dev/null || need+=(mosquitto-clients)
command -v jq >/dev/null || need+=(jq)
command -v rpm >/dev/null || need+=(rpm)
if [ ${#need[@]} -gt 0 ]; then
	echo "== installing ${need[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
		--no-install-recommends "${need[@]}" >/dev/null
fi
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)

# ---------------------------------------------------------------- waiting
# wait_until SECONDS COMMAND...: polls COMMAND until it succeeds; returns 1
# after SECONDS. wait_for SECONDS WHAT COMMAND...: the same, failing with WHAT.
wait_until() {
	local deadline=$(($(date +%s) + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		[ "$(date +%s)" -lt "$deadline" ] || return 1
		sleep 0.2
	done
}
wait_for() {
	local limit=$1 what=$2
	shift 2
	wait_until "$limit" "$@" || fail "timed out after ${limit} s waiting for: $what"
}

# ---------------------------------------------------------------- cleanup
nspawn_pid=
ct=
broker_pid=
sub_pid=
serial_ok=
cleanup() {
	local rc=$?
	stop_sub
	[ -n "$broker_pid" ] && kill "$broker_pid" 2>/dev/null && wait "$broker_pid" 2>/dev/null
	stop_container
	if [ "$rc" != 0 ]; then
		echo "system test failed (exit $rc); logs in $work: journal-*.txt, broker/mosquitto.log, messages.log, console.log" >&2
	fi
}
trap cleanup EXIT

# ---------------------------------------------------------------- container
seed=$work/seed-bookworm
seed_pkgs=systemd,systemd-sysv,dbus,procps,socat,rpm
if [ ! -x "$seed/bin/sh" ] || [ "$(cat "$seed.pkgs" 2>/dev/null)" != "$seed_pkgs" ]; then
	step "Debian root (debootstrap, cached in $seed)"
	mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)
	mirror=${mirror:-http://deb.debian.org/debian}
	rm -rf "$seed" "$seed.pkgs"
	# socat: the serial device (a pty) inside the root; rpm: step 7.
	debootstrap --variant=minbase --include="$seed_pkgs" bookworm "$seed" "$mirror" >"$work/debootstrap.log" 2>&1 \
		|| {
			tail -n 20 "$work/debootstrap.log"
			fail "debootstrap"
		}
	# No apt downloads inside the root: the packages come from files.
	rm -f "$seed"/var/cache/apt/archives/*.deb
	echo "$seed_pkgs" >"$seed.pkgs"
fi

root=$work/root
boot() { # name (for the journal file)
	ct_name=$1
	rm -rf "$root"
	cp -a "$seed" "$root"
	systemd-nspawn --register=no --keep-unit --quiet -D "$root" -b >"$work/console.log" 2>&1 &
	nspawn_pid=$!
	wait_for 30 "the container's PID 1" pgrep -P "$nspawn_pid"
	ct=$(pgrep -P "$nspawn_pid" | head -n1)
	wait_for 60 "systemctl is-system-running = running" sh -c \
		"nsenter -t $ct -a systemctl is-system-running | grep -qx running"
}
in_ct() { nsenter -t "$ct" -a "$@"; }
stop_container() {
	if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
		[ -n "$ct" ] && nsenter -t "$ct" -a journalctl --no-pager -o short-precise >"$work/journal-$ct_name.txt" 2>/dev/null || true
		kill -TERM "$nspawn_pid" 2>/dev/null || true
		local deadline=$(($(date +%s) + 30))
		while kill -0 "$nspawn_pid" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.2; done
		kill -KILL "$nspawn_pid" 2>/dev/null || true
		wait "$nspawn_pid" 2>/dev/null || true
	fi
	nspawn_pid=
	ct=
}
unit_prop() { in_ct systemctl show -P "$1" thingplus-gw.service; }
main_pid() { unit_prop MainPID; }
journal() { in_ct journalctl --no-pager -u thingplus-gw "$@"; }

# ---------------------------------------------------------------- broker
bdir=$work/broker
apikey=systest-apikey-$RANDOM$RANDOM
tester_pw=systest-tester
start_broker() {
	"$MOSQUITTO" -c "$bdir/mosquitto.conf" >>"$bdir/stdout.log" 2>&1 &
	broker_pid=$!
	wait_for 20 "Mosquitto listening on 127.0.0.1:$port" \
		mosquitto_pub -h 127.0.0.1 -p "$port" -u tester -P "$tester_pw" -t systest/ping -n
}
stop_broker() { # SIGTERM: Mosquitto saves its sessions (the test subscriber's queue) on exit
	kill -TERM "$broker_pid"
	wait "$broker_pid" 2>/dev/null || true
	broker_pid=
}
pick_port() {
	for _ in 1 2 3 4 5 6 7 8 9 10; do
		port=$((20000 + RANDOM % 40000))
		ss -Htln "sport = :$port" | grep -q . || return 0
	done
	fail "no free port found"
}
setup_broker() { # gateway id; port from pick_port
	rm -rf "$bdir"
	mkdir -p "$bdir"
	: >"$bdir/passwd"
	mosquitto_passwd -b "$bdir/passwd" "$1" "$apikey"
	mosquitto_passwd -b "$bdir/passwd" tester "$tester_pw"
	cat >"$bdir/mosquitto.conf" <<EOF
per_listener_settings false
allow_anonymous false
password_file $bdir/passwd
user root
persistence true
persistence_location $bdir/
autosave_interval 0
max_queued_messages 0
log_dest file $bdir/mosquitto.log
log_type all
listener $port 127.0.0.1
EOF
	start_broker
}
# The test's subscriber has a persistent session (-c): while it is stopped
# the broker queues what the gateway sends, and across a broker restart too.
msgs=$work/messages.log
start_sub() {
	# Line-buffered: the file is read while the subscriber runs.
	stdbuf -oL mosquitto_sub -h 127.0.0.1 -p "$port" -u tester -P "$tester_pw" -c -i systest-sub -q 1 \
		-t "v/a/g/$gw/#" -F '%t %p' >>"$msgs" 2>>"$work/sub.err" &
	sub_pid=$!
	wait_for 20 "the test subscriber connected" grep -q "New client connected .* as systest-sub" "$bdir/mosquitto.log"
}
stop_sub() {
	if [ -n "$sub_pid" ]; then
		kill "$sub_pid" 2>/dev/null || true
		wait "$sub_pid" 2>/dev/null || true
	fi
	sub_pid=
}
# retained TOPIC: the retained payload a fresh subscriber gets, "" if none.
retained() {
	mosquitto_sub -h 127.0.0.1 -p "$port" -u tester -P "$tester_pw" -t "$1" -C 1 -W 3 --retained-only 2>/dev/null || true
}
rpc() { # id method params-json
	mosquitto_pub -h 127.0.0.1 -p "$port" -u tester -P "$tester_pw" -q 1 -t "v/a/g/$gw/req" \
		-m "{\"id\":\"$1\",\"method\":\"$2\",\"params\":$3}"
}
# response ID: the response to request ID (waits for it).
response() {
	wait_for 20 "the response to request $1" grep -q "^v/a/g/$gw/res .*\"id\":\"$1\"" "$msgs"
	grep "^v/a/g/$gw/res .*\"id\":\"$1\"" "$msgs" | head -n1 | cut -d' ' -f2-
}
# values SENSOR_ID: every "time value" pair that arrived for the sensor, in arrival order.
values() {
	grep "^v/a/g/$gw {" "$msgs" | cut -d' ' -f2- |
		jq -r --arg s "$1" 'select(has($s)) | .[$s] | range(0; length; 2) as $i | "\(.[$i]) \(.[$i + 1])"'
}
count_values() { values "$1" | wc -l; }
# check_order: each sensor's readings arrived in time order. A message in
# flight when the daemon died may come again (at-least-once): repeats of
# a time already seen are skipped, counted in $repeats.
check_order() {
	local s times first
	repeats=0
	for s in temperature-0 humidity-0 number-0 temperature-1 number-1; do
		times=$(values "$gw-$s" | cut -d' ' -f1)
		first=$(awk '!seen[$1]++' <<<"$times")
		repeats=$((repeats + $(grep -c . <<<"$times") - $(grep -c . <<<"$first")))
		sort -c -n <<<"$first" 2>/dev/null \
			|| fail "values of $gw-$s arrived out of order: $(tr '\n' ' ' <<<"$first" | head -c 600)"
	done
}
retained_is() { [ "$(retained "v/a/g/$gw/mqtt/status")" = "$1" ]; }
status_text_matches() { unit_prop StatusText | grep -Eq -- "$1"; }
# journal_has PATTERN [PATTERN2] [journalctl args...]: a short-format line matching both.
journal_has() {
	local a=$1 b=${2:-} out
	shift 2 || shift $#
	out=$(journal -o short "$@")
	grep -- "$a" <<<"$out" | grep -q -- "$b"
}
values_arrived() { grep "^v/a/g/$gw {" "$msgs" | grep -q "\"$1\""; }
restarted_since() { [ "$(unit_prop NRestarts)" -gt "$1" ] && in_ct systemctl is-active -q thingplus-gw; }
pending() { unit_prop StatusText | sed -nE 's/.*, ([0-9][^,]*) pending.*/\1/p' | tr -dc '0-9'; }
backlog_at_least() {
	local n
	n=$(pending)
	[ -n "$n" ] && [ "$n" -ge "$1" ]
}
# missing_readings EXPORT.jsonl: the exported readings that have not arrived (sensor@time).
missing_readings() {
	local s t
	jq -r '"\(.sensor) \(.time)"' "$1" | while read -r s t; do
		values "$s" | cut -d' ' -f1 | grep -qx "$t" || echo "$s@$t"
	done
}
none_missing() { [ -z "$(missing_readings "$1")" ]; }
# exported_at_least N: `thingplus-gw buffer export` (committed, unacknowledged readings) lists N or more.
exported_at_least() { [ "$(in_ct thingplus-gw buffer export 2>/dev/null | wc -l)" -ge "$1" ]; }

# ---------------------------------------------------------------- packages
step "packages (scripts/package.sh)"
rm -f "$work"/thingplus-gw_*.deb "$work"/thingplus-gw-*.rpm
scripts/package.sh >"$work/package.log" 2>&1 || {
	tail -n 30 "$work/package.log"
	fail "scripts/package.sh"
}
# Copied out first: `cargo deb --output` below replaces target/debian/'s .deb.
cp target/debian/thingplus-gw_*_amd64.deb target/generate-rpm/thingplus-gw-*.x86_64.rpm "$work/"
deb=$(ls "$work"/thingplus-gw_*_amd64.deb)
rpmf=$(ls "$work"/thingplus-gw-*.x86_64.rpm)
ver=$(dpkg-deb -f "$deb" Version)
# The previous version for the upgrade: the same binary with a lower version.
prev_ver=0.0.1-1
cargo deb --no-build --locked --deb-version "$prev_ver" --output "$work/previous.deb" >/dev/null
# Put the tested .deb back: scripts/supply-chain.sh --packages checks it next.
cp "$deb" target/debian/

iface=$(ip -o route show default 2>/dev/null | awk '{print $5; exit}')
if [ -z "$iface" ]; then
	for n in /sys/class/net/*; do
		[ "$(basename "$n")" = lo ] && continue
		iface=$(basename "$n")
		break
	done
fi
[ -n "$iface" ] || fail "no network interface to take the gateway id from"

write_config() { # extra toml appended
	cat >"$root/etc/thingplus-gw/config.toml" <<EOF
[gateway]
id = "auto"
interface = "$iface"
apikey_file = "/etc/thingplus-gw/apikey"
report_interval = "2s"

[mqtt]
host = "127.0.0.1"
port = $port
tls = false
reconnect_min = "1s"
reconnect_max = "2s"

[[sensor]]
id = "{gateway_id}-temperature-0"
type = "temperature"
path = "/srv/systest/temperature"
scale = 0.001
interval = "200ms"

[[sensor]]
id = "{gateway_id}-humidity-0"
type = "humidity"
path = "/srv/systest/humidity"
interval = "200ms"

[[sensor]]
id = "{gateway_id}-number-0"
type = "number"
path = "/proc/loadavg"
regex = '^(\S+)'
interval = "1s"

[serial.station]
device = "/dev/ttySYSTEST"
format = "csv"
columns = ["temp", "hum"]

[[sensor]]
id = "{gateway_id}-temperature-1"
type = "temperature"
serial = "station"
field = "temp"
interval = "500ms"

[[actuator]]
id = "{gateway_id}-led-0"
type = "led"
path = "/sys/class/leds/systest:green"

[[actuator]]
id = "{gateway_id}-powerSwitch-0"
type = "powerSwitch"
path = "/sys/class/gpio/gpio17/value"

[[actuator]]
id = "{gateway_id}-powerSwitch-1"
type = "exec"
command = ["/usr/local/bin/systest-probe"]
timeout = "20s"
$1
EOF
}

# Fixtures inside the booted root: sensor files, a serial instrument on a pty
# owned by group dialout, an LED and an exported GPIO line under /sys/class
# (a tmpfs copy of the real /sys/class bound over it: the container's /sys
# is read-only and this machine has neither), with the permissions the
# packaged udev rule gives them (no udevd runs in a container: the rule's
# own RUN commands are executed for each device).
fixtures() {
	mkdir -p "$root/srv/systest"
	echo 21500 >"$root/srv/systest/temperature"
	echo 40 >"$root/srv/systest/humidity"
	chmod 0644 "$root"/srv/systest/*
	# The instrument: a CSV line every 200 ms (its own pace, not a wait).
	printf '#!/bin/sh\nwhile :; do echo 23.5,41; sleep 0.2; done\n' >"$root/usr/local/bin/systest-instrument"
	chmod 0755 "$root/usr/local/bin/systest-instrument"
	in_ct systemd-run --quiet --unit=systest-serial socat \
		PTY,link=/dev/ttySYSTEST,group=dialout,perm=0660,raw,echo=0 EXEC:/usr/local/bin/systest-instrument
	wait_for 20 "the serial pty /dev/ttySYSTEST" in_ct test -c /dev/ttySYSTEST
	[ "$(in_ct stat -L -c '%G %a' /dev/ttySYSTEST)" = "dialout 660" ] \
		|| fail "the test pty is $(in_ct stat -L -c '%G %a' /dev/ttySYSTEST), expected dialout 660"

	in_ct sh -euc '
		mkdir -p /run/systest-class
		cp -a /sys/class/. /run/systest-class/ 2>/dev/null || true
		rm -rf /run/systest-class/leds /run/systest-class/gpio
		led=/run/systest-class/leds/systest:green
		mkdir -p $led /run/systest-class/gpio/gpio17
		echo 0 >$led/brightness; echo 1 >$led/max_brightness; echo "[none] timer heartbeat" >$led/trigger
		gpio=/run/systest-class/gpio/gpio17
		echo 0 >$gpio/value; echo out >$gpio/direction; echo 0 >$gpio/active_low
		chmod 0644 $led/* $gpio/*
		mount --bind /run/systest-class /sys/class'
	local rules=$root/usr/lib/udev/rules.d/60-thingplus-gw.rules
	udev_run leds /class/leds/systest:green "$rules"
	udev_run gpio /class/gpio/gpio17 "$rules"
	for f in /sys/class/leds/systest:green/brightness /sys/class/leds/systest:green/trigger /sys/class/gpio/gpio17/value; do
		in_ct stat -c '%a %G' "$f" | grep -Eq '^66[04] (thingplus-gw|gpio)$' \
			|| fail "after the udev rule, $f is $(in_ct stat -c '%a %U:%G' "$f")"
	done

	cat >"$root/usr/local/bin/systest-probe" <<'EOF'
#!/bin/sh
# Records which writes and which syscall are allowed: run as the exec
# actuator inside the service's sandbox, and as the same user outside it.
out=${1:-/var/lib/thingplus-gw/probe.txt}
case "$out" in /*) ;; *) out=/var/lib/thingplus-gw/probe.txt ;; esac
: >"$out"
for d in /var/lib/thingplus-gw /run/thingplus-gw /srv/systest/open /var/lib/systest-open /etc/thingplus-gw /etc /usr/local /var/log /root /home; do
	if (echo x >"$d/.systest-probe") 2>/dev/null; then
		echo "write $d allowed" >>"$out"
		rm -f "$d/.systest-probe"
	else
		echo "write $d refused" >>"$out"
	fi
done
# Raising one's own niceness (setpriority) and narrowing one's own CPU
# affinity (sched_setaffinity) need no privilege: only the syscall filter
# (~@resources) refuses them.
if [ -z "$(nice -n 5 true 2>&1)" ]; then echo "setpriority allowed" >>"$out"; else echo "setpriority refused" >>"$out"; fi
if taskset 1 true 2>/dev/null; then echo "sched_setaffinity allowed" >>"$out"; else echo "sched_setaffinity refused" >>"$out"; fi
echo "groups $(id -G)" >>"$out"
EOF
	chmod 0755 "$root/usr/local/bin/systest-probe"
	# Writable by everyone: only the sandbox (ProtectSystem=strict) keeps the service out.
	mkdir -p "$root/srv/systest/open" "$root/var/lib/systest-open"
	chmod 1777 "$root/srv/systest/open" "$root/var/lib/systest-open"
}

# udev_run SUBSYSTEM DEVPATH RULES: runs the RUN+= commands of the rule
# lines matching SUBSYSTEM=="..." for DEVPATH (%p), as udev would on "add".
udev_run() {
	local cmds
	cmds=$(grep -v '^#' "$3" | grep -F "SUBSYSTEM==\"$1\"" | grep -o 'RUN+="[^"]*"' | sed 's/^RUN+="//; s/"$//')
	[ -n "$cmds" ] || fail "the udev rule has no RUN commands for subsystem $1"
	while IFS= read -r c; do
		in_ct sh -c "${c//%p/$2}" || fail "udev rule command failed: ${c//%p/$2}"
	done <<<"$cmds"
}

# ================================================================ 1
step "1. apt install, configure as README says, start"
boot deb
cp "$deb" "$root/root/"
in_ct sh -c "cd /root && DEBIAN_FRONTEND=noninteractive apt-get install -y -q ./$(basename "$deb")" >"$work/apt-install.log" 2>&1 \
	|| {
		tail -n 20 "$work/apt-install.log"
		fail "apt install ./$(basename "$deb")"
	}
grep -q 'thingplus-gw: set the APIKEY' "$work/apt-install.log" \
	|| fail "the unconfigured install did not say what to configure (apt-install.log)"
[ "$(unit_prop UnitFileState)" = enabled ] || fail "the unit is not enabled after install: $(unit_prop UnitFileState)"
[ "$(unit_prop ActiveState)" = inactive ] || fail "the unconfigured service runs: $(unit_prop ActiveState)"
ok "installed $ver: unit enabled, not started while unconfigured"

pick_port
write_config ""
gw=$(in_ct thingplus-gw id) || fail "thingplus-gw id"
[[ $gw =~ ^[0-9a-f]{12}$ ]] || fail "thingplus-gw id printed '$gw'"
setup_broker "$gw"
# As README says: the APIKEY in its file, root:thingplus-gw 0640.
in_ct sh -c "printf '%s' '$apikey' | tee /etc/thingplus-gw/apikey >/dev/null"
in_ct chown root:thingplus-gw /etc/thingplus-gw/apikey
in_ct chmod 0640 /etc/thingplus-gw/apikey
fixtures

in_ct thingplus-gw check >"$work/check.out" 2>"$work/check.err" || {
	cat "$work/check.err"
	fail "thingplus-gw check refused the configuration"
}
# The only true warnings for this file: a report interval and a reconnect
# delay shorter than the service allows (test settings).
if grep -i warn "$work/check.err" | grep -v -e 'report_interval' -e 'report interval' -e 'reconnect_min' -e '60 s' -e '10 s' | grep -q .; then
	cat "$work/check.err"
	fail "thingplus-gw check as root gives an unexpected warning"
fi
ok "thingplus-gw check: no false warning ($(grep -ci warn "$work/check.err" || true) expected ones)"

: >"$msgs"
start_sub
# The pty is not a real UART: a test-only drop-in allows it (packaging/README.md).
mkdir -p "$root/etc/systemd/system/thingplus-gw.service.d"
cat >"$root/etc/systemd/system/thingplus-gw.service.d/50-systest-pty.conf" <<'EOF'
[Service]
DeviceAllow=char-pts rw
EOF
in_ct systemctl daemon-reload
in_ct systemctl start thingplus-gw || fail "systemctl start thingplus-gw"
[ "$(unit_prop ActiveState)" = active ] || fail "ActiveState=$(unit_prop ActiveState) after start"
wait_for 20 "the retained 'on'" retained_is on
status_re="^v/a/g/$gw/status on,[0-9]+,.*$gw-temperature-0,on,.*$gw-humidity-0,on,.*$gw-temperature-1,on"
wait_for 20 "a gateway status with every sensor on" grep -Eq "$status_re" "$msgs"
for s in temperature-0 humidity-0 number-0 temperature-1; do
	wait_for 20 "values of $gw-$s" values_arrived "$gw-$s"
done
[ "$(values "$gw-temperature-0" | tail -n1 | cut -d' ' -f2)" = 21.5 ] || fail "temperature-0 value: $(values "$gw-temperature-0" | tail -n1)"
[ "$(values "$gw-temperature-1" | tail -n1 | cut -d' ' -f2)" = 23.5 ] || fail "serial temperature-1 value: $(values "$gw-temperature-1" | tail -n1)"
status_text=$(unit_prop StatusText)
[[ $status_text == "connected to 127.0.0.1:$port, "*pending* ]] || fail "StatusText: '$status_text'"
[ "$(unit_prop WatchdogUSec)" = 30s ] || fail "WatchdogUSec=$(unit_prop WatchdogUSec), expected 30s"
[ "$(unit_prop Type)" = notify ] || fail "Type=$(unit_prop Type)"
ok "started: retained on, statuses, values of file and serial sensors; StatusText '$status_text', WatchdogUSec=30s"

# ================================================================ 5 (while it runs as installed)
step "5. the sandbox at run time"
pid=$(main_pid)
led=/sys/class/leds/systest:green
rpc led1 controlActuator "{\"id\":\"$gw-led-0\",\"cmd\":\"on\"}"
response led1 | grep -q '"result"' || fail "LED on refused: $(response led1)"
[ "$(in_ct cat $led/brightness)" = 1 ] || fail "LED brightness after on: $(in_ct cat $led/brightness)"
rpc sw1 controlActuator "{\"id\":\"$gw-powerSwitch-0\",\"cmd\":\"on\"}"
response sw1 | grep -q '"result"' || fail "GPIO value file switch refused: $(response sw1)"
[ "$(in_ct cat /sys/class/gpio/gpio17/value)" = 1 ] || fail "GPIO value after on: $(in_ct cat /sys/class/gpio/gpio17/value)"
ok "LED and GPIO value file written by the sandboxed service"
rpc probe1 controlActuator "{\"id\":\"$gw-powerSwitch-1\",\"cmd\":\"on\"}"
response probe1 | grep -q '"result"' || fail "the exec actuator failed: $(response probe1)"
probe=$(cat "$root/var/lib/thingplus-gw/probe.txt")
# The same probe as the same user outside the sandbox: what it may do there
# is what the sandbox takes away.
in_ct runuser -u thingplus-gw -- /usr/local/bin/systest-probe /var/lib/systest-open/probe-outside.txt
outside=$(cat "$root/var/lib/systest-open/probe-outside.txt")
for d in /var/lib/thingplus-gw /run/thingplus-gw; do
	grep -qx "write $d allowed" <<<"$probe" || fail "the service cannot write its own $d: $probe"
done
for d in /srv/systest/open /var/lib/systest-open; do
	grep -qx "write $d allowed" <<<"$outside" || fail "control: user thingplus-gw cannot write $d even outside the sandbox: $outside"
	grep -qx "write $d refused" <<<"$probe" || fail "the sandbox lets the service write $d (mode 1777): $probe"
done
for d in /etc/thingplus-gw /etc /usr/local /var/log /root /home; do
	grep -qx "write $d refused" <<<"$probe" || fail "the service can write $d: $probe"
done
for c in setpriority sched_setaffinity; do
	grep -qx "$c allowed" <<<"$outside" || fail "control: $c refused even outside the sandbox: $outside"
	grep -qx "$c refused" <<<"$probe" || fail "$c (outside the syscall filter) was allowed in the sandbox: $probe"
done
ok "exec actuator in the sandbox: writes only to its state and runtime dirs (world-writable dirs refused), setpriority and sched_setaffinity refused; all allowed to the same user outside"
groups=$(in_ct sh -c "grep ^Groups: /proc/$pid/status")
for g in dialout gpio; do
	gid=$(in_ct getent group "$g" | cut -d: -f3) || fail "no group $g in the root"
	grep -qw "$gid" <<<"$groups" || fail "the service is not in group $g ($gid): $groups"
done
ok "service groups: dialout, gpio ($groups)"
devallow=$(unit_prop DeviceAllow)
for d in char-ttyS char-ttyUSB char-ttyACM char-ttyAMA char-gpiochip; do
	grep -q "$d rw" <<<"$devallow" || fail "DeviceAllow lacks $d rw: $devallow"
done
[ "$(unit_prop DevicePolicy)" = closed ] || fail "DevicePolicy=$(unit_prop DevicePolicy)"
rules=$root/usr/lib/udev/rules.d/60-thingplus-gw.rules
grep -v '^#' "$rules" | grep 'KERNEL=="gpiochip' | grep -q 'GROUP="gpio"' || fail "the udev rule gives /dev/gpiochip* no group gpio"
ok "devices: DevicePolicy=closed with serial classes and gpiochip; /dev/gpiochip* group gpio by the udev rule"
in_ct systemd-analyze security thingplus-gw.service >"$work/security-running.txt" 2>&1 || true
running_score=$(tail -n1 "$work/security-running.txt" | grep -Eo '[0-9]+\.[0-9]+' | head -n1)
offline_score=$(systemd-analyze security --offline=true systemd/thingplus-gw.service 2>/dev/null | tail -n1 | grep -Eo '[0-9]+\.[0-9]+' | head -n1)
[ -n "$running_score" ] || fail "systemd-analyze security on the running unit: $(tail -n3 "$work/security-running.txt")"
[ "$running_score" = "$offline_score" ] || fail "exposure of the running unit $running_score differs from offline $offline_score"
awk -v s="$running_score" 'BEGIN { exit !(s <= 2.0) }' || fail "exposure $running_score > 2.0"
ok "systemd-analyze security: $running_score running, $offline_score offline"

# ================================================================ 2
step "2. journald"
wait_for 20 "the journal has lines with SENSOR_ID=$gw-temperature-1" journal_has . "" SENSOR_ID="$gw-temperature-1"
rm "$root/srv/systest/humidity"
wait_for 20 "journalctl -p warning shows the humidity sensor failing" journal_has 'sensor read failed' "$gw-humidity-0" -p warning
journal SENSOR_ID="$gw-humidity-0" -o cat | grep -q 'sensor read failed' || fail "SENSOR_ID=$gw-humidity-0 does not select its failure"
if journal SENSOR_ID="$gw-humidity-0" -o verbose | grep '^ *SENSOR_ID=' | grep -qv "SENSOR_ID=$gw-humidity-0\$"; then
	fail "SENSOR_ID=$gw-humidity-0 selects other sensors' lines"
fi
wait_for 20 "status err for the humidity sensor" grep -Eq "^v/a/g/$gw/status .*$gw-humidity-0,err" "$msgs"
# Default short format: the message itself says what happened to what.
short=$(journal -o short)
grep 'sensor read failed' <<<"$short" | grep "$gw-humidity-0" | grep -q '/srv/systest/humidity' \
	|| fail "the short line of the failed read lacks the sensor or the reason: $(grep 'sensor read failed' <<<"$short" | head -n1)"
grep 'connected to Thing+ broker' <<<"$short" | grep -q "127.0.0.1:$port" \
	|| fail "the short 'connected' line lacks the broker: $(grep 'connected to Thing+ broker' <<<"$short" | head -n1)"
grep 'serial port opened' <<<"$short" | grep -q '/dev/ttySYSTEST' \
	|| fail "the short 'serial port opened' line lacks the port: $(grep 'serial port opened' <<<"$short" | head -n1)"
echo 41 >"$root/srv/systest/humidity"
chmod 0644 "$root/srv/systest/humidity"
wait_for 20 "the humidity sensor recovering" journal_has 'sensor recovered' "$gw-humidity-0"
ok "journal: SENSOR_ID filter, -p warning, short lines name sensor, path, broker, port"

# ================================================================ 3
step "3. systemctl reload"
pid=$(main_pid)
cp "$root/etc/thingplus-gw/config.toml" "$work/config.good"
printf '\n[[sensor]]\nid = "broken"\ntype = "number"\npath = 42\n' >>"$root/etc/thingplus-gw/config.toml"
in_ct systemctl reload thingplus-gw || fail "systemctl reload (broken file) failed as a command"
wait_for 20 "the reload refusal in the journal" journal_has 'configuration reload refused'
refusal=$(journal -o short | grep 'configuration reload refused' | tail -n1)
grep -q 'config.toml' <<<"$refusal" || fail "the refusal line does not say why: $refusal"
[ "$(main_pid)" = "$pid" ] || fail "a refused reload replaced the process"
[ "$(unit_prop ActiveState)" = active ] || fail "ActiveState=$(unit_prop ActiveState) after a refused reload"
in_ct systemctl status thingplus-gw --no-pager -l >"$work/status-refused.txt" || true
grep '^ *Status: ' "$work/status-refused.txt" | grep 'reload refused' | grep -q 'config.toml:' \
	|| fail "the Status: line of systemctl status does not show the refusal and its reason: $(grep '^ *Status: ' "$work/status-refused.txt")"
n=$(count_values "$gw-temperature-0")
more_values() { [ "$(count_values "$gw-temperature-0")" -gt "$n" ]; }
wait_for 20 "values still flowing after the refused reload" more_values
ok "broken file refused, the old configuration runs ($refusal)"
cp "$work/config.good" "$root/etc/thingplus-gw/config.toml"
echo 7 >"$root/srv/systest/extra"
chmod 0644 "$root/srv/systest/extra"
printf '\n[[sensor]]\nid = "{gateway_id}-number-1"\ntype = "number"\npath = "/srv/systest/extra"\ninterval = "200ms"\n' \
	>>"$root/etc/thingplus-gw/config.toml"
in_ct systemctl reload thingplus-gw || fail "systemctl reload (good file)"
wait_for 20 "the new sensor's values after the reload" values_arrived "$gw-number-1"
journal -o short | grep -q 'configuration reloaded' || fail "no 'configuration reloaded' line"
[ "$(main_pid)" = "$pid" ] || fail "the reload replaced the process"
in_ct systemctl status thingplus-gw --no-pager >"$work/status-applied.txt" || true
if grep '^ *Status: ' "$work/status-applied.txt" | grep -q 'reload refused'; then
	fail "the Status: line still shows the old refusal after a good reload: $(grep '^ *Status: ' "$work/status-applied.txt")"
fi
ok "good file applied: new sensor reporting, same process"

# ================================================================ 4
step "4. kill -9 with a backlog"
stop_sub
stop_broker
wait_for 30 "the service to notice the broker is down" status_text_matches '^(offline|connecting)'
wait_for 30 "a backlog of at least 20 readings" backlog_at_least 20
wait_for 30 "at least 20 readings committed in the buffer (thingplus-gw buffer export)" exported_at_least 20
restarts=$(unit_prop NRestarts)
pid=$(main_pid)
# What is committed in the buffer right before the kill: it must all arrive.
in_ct kill -STOP "$pid"
in_ct thingplus-gw buffer export >"$work/backlog.jsonl" 2>"$work/export.err" \
	|| fail "thingplus-gw buffer export: $(cat "$work/export.err")"
in_ct kill -KILL "$pid"
backlog_n=$(wc -l <"$work/backlog.jsonl")
[ "$backlog_n" -ge 20 ] || fail "only $backlog_n readings pending before the kill"
wait_for 40 "systemd restarting the killed service" restarted_since "$restarts"
[ "$(main_pid)" != "$pid" ] || fail "same MainPID after kill -9"
start_broker
start_sub
# Every reading committed before the kill arrives, and each sensor's times only grow.
wait_until 60 none_missing "$work/backlog.jsonl" \
	|| fail "of the $backlog_n readings buffered before the kill, these never arrived: $(missing_readings "$work/backlog.jsonl" | head -n5 | tr '\n' ' ')"
check_order
ok "kill -9: restarted by systemd, the $backlog_n buffered readings delivered, in order ($repeats repeated)"

step "4. kill -STOP: the watchdog"
mkdir -p "$root/etc/systemd/system/thingplus-gw.service.d"
cat >"$root/etc/systemd/system/thingplus-gw.service.d/60-systest-watchdog.conf" <<'EOF'
[Service]
WatchdogSec=3s
TimeoutAbortSec=5s
EOF
in_ct systemctl daemon-reload
in_ct systemctl restart thingplus-gw
pid=$(main_pid)
restarts=$(unit_prop NRestarts)
in_ct kill -STOP "$pid"
wait_for 60 "systemd restarting the stopped service" restarted_since "$restarts"
journal -o short | grep -q 'Watchdog timeout' || fail "the journal has no 'Watchdog timeout'"
[ "$(main_pid)" != "$pid" ] || fail "same MainPID after the watchdog"
rm "$root/etc/systemd/system/thingplus-gw.service.d/60-systest-watchdog.conf"
in_ct systemctl daemon-reload
ok "kill -STOP: watchdog timeout, restarted"

step "4. a configuration error: exit 78, no restart loop"
cp "$root/etc/thingplus-gw/config.toml" "$work/config.good"
printf '\n[gateway.nonsense]\n' >>"$root/etc/thingplus-gw/config.toml"
in_ct systemctl restart thingplus-gw && fail "restart with a broken config succeeded" || true
wait_for 20 "the unit failed" in_ct systemctl is-failed -q thingplus-gw
[ "$(unit_prop ExecMainStatus)" = 78 ] || fail "ExecMainStatus=$(unit_prop ExecMainStatus), expected 78"
[ "$(unit_prop Result)" = exit-code ] || fail "Result=$(unit_prop Result)"
# failed, not auto-restart: no restart is scheduled.
[ "$(unit_prop SubState)" = failed ] || fail "SubState=$(unit_prop SubState), expected failed (no restart)"
# A manual start resets the counter: any automatic restart would show here.
[ "$(unit_prop NRestarts)" = 0 ] || fail "restarted after exit 78 (NRestarts=$(unit_prop NRestarts))"
in_ct systemctl status thingplus-gw --no-pager -l >"$work/status-78.txt" || true
grep -q 'configuration error' "$work/status-78.txt" || fail "systemctl status does not show the configuration error"
ok "exit 78, Result=exit-code, SubState=failed"
cp "$work/config.good" "$root/etc/thingplus-gw/config.toml"
in_ct systemctl start thingplus-gw || fail "start after fixing the config"

step "4. systemctl stop"
wait_for 20 "the retained 'on' again" retained_is on
in_ct systemctl stop thingplus-gw
[ "$(retained "v/a/g/$gw/mqtt/status")" = off ] || fail "retained status after stop: '$(retained "v/a/g/$gw/mqtt/status")'"
[ "$(unit_prop Result)" = success ] || fail "Result=$(unit_prop Result) after stop"
[ "$(unit_prop ExecMainStatus)" = 0 ] || fail "ExecMainStatus=$(unit_prop ExecMainStatus) after stop"
ok "stop: retained off, clean exit"

# ================================================================ 6
step "6. upgrade from $prev_ver with a backlog, remove, purge"
in_ct sh -c 'DEBIAN_FRONTEND=noninteractive apt-get purge -y -q thingplus-gw' >"$work/apt-purge0.log" 2>&1 || fail "apt purge before the upgrade test"
cp "$work/previous.deb" "$root/root/previous.deb"
in_ct sh -c 'cd /root && DEBIAN_FRONTEND=noninteractive apt-get install -y -q ./previous.deb' >"$work/apt-prev.log" 2>&1 \
	|| fail "apt install the previous version: $(tail -n5 "$work/apt-prev.log")"
in_ct sh -c "printf '%s' '$apikey' > /etc/thingplus-gw/apikey && chown root:thingplus-gw /etc/thingplus-gw/apikey && chmod 0640 /etc/thingplus-gw/apikey"
cp "$work/config.good" "$root/etc/thingplus-gw/config.toml"
echo '# operator edit' >>"$root/etc/thingplus-gw/config.toml"
in_ct systemctl start thingplus-gw
wait_for 20 "the previous version connected" status_text_matches '^connected'
stop_sub
stop_broker
wait_for 30 "a backlog under the previous version" backlog_at_least 20
wait_for 30 "at least 20 readings committed under the previous version" exported_at_least 20
pid=$(main_pid)
in_ct thingplus-gw buffer export >"$work/backlog-upgrade.jsonl" 2>"$work/export.err" || fail "buffer export: $(cat "$work/export.err")"
upg_n=$(wc -l <"$work/backlog-upgrade.jsonl")
in_ct sh -c "cd /root && DEBIAN_FRONTEND=noninteractive apt-get install -y -q ./$(basename "$deb")" >"$work/apt-upgrade.log" 2>&1 \
	|| fail "apt install (upgrade): $(tail -n5 "$work/apt-upgrade.log")"
[ "$(in_ct dpkg-query -W -f '${Version}' thingplus-gw)" = "$ver" ] || fail "not upgraded to $ver"
grep -q '^# operator edit' "$root/etc/thingplus-gw/config.toml" || fail "the upgrade lost the edited conffile"
in_ct systemctl is-active -q thingplus-gw || fail "not running after the upgrade"
[ "$(main_pid)" != "$pid" ] || fail "the upgrade did not restart the service"
start_broker
start_sub
wait_until 60 none_missing "$work/backlog-upgrade.jsonl" \
	|| fail "of the $upg_n readings buffered before the upgrade, these never arrived: $(missing_readings "$work/backlog-upgrade.jsonl" | head -n5 | tr '\n' ' ')"
check_order
ok "upgrade $prev_ver -> $ver: conffile kept, restarted, backlog of $upg_n delivered in order ($repeats repeated)"
in_ct sh -c 'DEBIAN_FRONTEND=noninteractive apt-get remove -y -q thingplus-gw' >"$work/apt-remove.log" 2>&1 || fail "apt remove"
in_ct systemctl is-active -q thingplus-gw && fail "still running after apt remove"
[ -d "$root/var/lib/thingplus-gw/buffer" ] || fail "apt remove deleted /var/lib/thingplus-gw"
in_ct sh -c 'DEBIAN_FRONTEND=noninteractive apt-get purge -y -q thingplus-gw' >"$work/apt-purge.log" 2>&1 || fail "apt purge"
[ ! -e "$root/var/lib/thingplus-gw" ] || fail "apt purge left /var/lib/thingplus-gw"
[ ! -e "$root/etc/thingplus-gw" ] || fail "apt purge left /etc/thingplus-gw"
if in_ct getent passwd thingplus-gw >/dev/null; then fail "apt purge left the user thingplus-gw"; fi
ok "remove keeps /var/lib/thingplus-gw, purge removes it and the user"
stop_container

# ================================================================ 7
step "7. the .rpm with Debian's rpm"
boot rpm
cp "$rpmf" "$root/root/pkg.rpm"
# --nodeps: Debian's rpm database is empty, so it knows none of the
# packages that provide what the rpm requires (shadow-utils, /bin/sh and
# the libraries: libc.so.6, libgcc_s.so.1, ...). They are installed by dpkg.
in_ct rpm -qpR /root/pkg.rpm >"$work/rpm-requires.txt"
in_ct rpm -i --nodeps /root/pkg.rpm >"$work/rpm-install.log" 2>&1 || fail "rpm -i: $(cat "$work/rpm-install.log")"
in_ct getent passwd thingplus-gw >/dev/null || fail "the rpm scriptlets made no user"
[ "$(unit_prop UnitFileState)" = enabled ] || fail "rpm: unit not enabled ($(unit_prop UnitFileState))"
in_ct sh -c "printf '%s' '$apikey' > /etc/thingplus-gw/apikey && chown root:thingplus-gw /etc/thingplus-gw/apikey && chmod 0640 /etc/thingplus-gw/apikey"
cp "$work/config.good" "$root/etc/thingplus-gw/config.toml"
fixtures
: >"$msgs.rpm"
in_ct systemctl start thingplus-gw || fail "rpm: systemctl start"
wait_for 20 "rpm: connected" status_text_matches '^connected'
wait_for 20 "rpm: the retained 'on'" retained_is on
ok "rpm: user, unit enabled, service started under systemd and connected"
in_ct rpm -e thingplus-gw >"$work/rpm-erase.log" 2>&1 || fail "rpm -e: $(cat "$work/rpm-erase.log")"
in_ct systemctl is-active -q thingplus-gw && fail "rpm -e left the service running"
st=$(unit_prop UnitFileState)
[ "$st" != enabled ] || fail "rpm -e left the unit enabled"
[ "$(retained "v/a/g/$gw/mqtt/status")" = off ] || fail "rpm -e: retained status '$(retained "v/a/g/$gw/mqtt/status")', expected off"
ok "rpm -e: stopped (retained off) and disabled"

stop_container
rm -rf "$root"
echo "system test passed in $(($(date +%s) - start)) s"
