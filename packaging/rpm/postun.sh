# thingplus-gw %postun ($1: 0 erase, 1 upgrade). RPM has no purge: the
# buffered readings in /var/lib/thingplus-gw stay; a modified config is kept
# as config.toml.rpmsave.
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || :
	if [ "$1" -ge 1 ]; then
		systemctl try-restart thingplus-gw.service >/dev/null 2>&1 || :
	fi
fi
exit 0
