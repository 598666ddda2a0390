# thingplus-gw %preun ($1: 0 erase, 1 upgrade)
if [ "$1" -eq 0 ]; then
	systemctl --no-reload disable --now thingplus-gw.service >/dev/null 2>&1 || :
fi
exit 0
