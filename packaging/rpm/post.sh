# thingplus-gw %post ($1: 1 install, 2 upgrade)
if [ ! -d /var/lib/thingplus-gw ]; then
	install -d -o thingplus-gw -g thingplus-gw -m 0750 /var/lib/thingplus-gw
fi
if [ -d /run/udev ] && command -v udevadm >/dev/null 2>&1; then
	udevadm trigger --subsystem-match=leds --subsystem-match=gpio --action=add >/dev/null 2>&1 || :
fi
if [ "$1" -eq 1 ]; then
	# Install: enable the unit; start it only once it is configured.
	systemctl --no-reload enable thingplus-gw.service >/dev/null 2>&1 || :
	if [ -d /run/systemd/system ]; then
		systemctl daemon-reload >/dev/null 2>&1 || :
		if /usr/bin/thingplus-gw check --config /etc/thingplus-gw/config.toml >/dev/null 2>&1; then
			systemctl start thingplus-gw.service >/dev/null 2>&1 || :
		else
			echo "thingplus-gw: set the APIKEY and sensors in /etc/thingplus-gw/config.toml (thingplus-gw check), then: systemctl start thingplus-gw"
		fi
	fi
fi
exit 0
