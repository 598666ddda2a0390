#!/usr/bin/env bash
# Runs the whole test suite. Installs what the tests talk to (Mosquitto) when
# it is missing, so it works on a fresh Debian/Ubuntu machine.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ] || ! command -v mosquitto_passwd >/dev/null || ! command -v mosquitto_pub >/dev/null; then
  echo "installing mosquitto (the tests start their own broker)..." >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
  # The tests start brokers themselves; the packaged service is not needed.
  $SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || true
fi

# The TLS tests check the system trust store (tests/transport.rs fails
# without it rather than skipping).
if [ ! -s /etc/ssl/certs/ca-certificates.crt ]; then
  echo "installing ca-certificates (the TLS tests use the system trust store)..." >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ca-certificates >/dev/null
fi

cargo test "$@"
