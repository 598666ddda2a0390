# thingplus-gw %pre: the system account, before files owned by its group land.
getent group thingplus-gw >/dev/null || groupadd -r thingplus-gw
# GPIO chips and exported GPIO lines (udev rule; SupplementaryGroups=gpio).
getent group gpio >/dev/null || groupadd -r gpio
getent passwd thingplus-gw >/dev/null || useradd -r -g thingplus-gw \
	-d /var/lib/thingplus-gw -M -s /sbin/nologin -c "Thing+ gateway daemon" thingplus-gw
exit 0
