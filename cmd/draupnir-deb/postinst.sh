#!/bin/sh
# postinst of the draupnir package: make the directories the server needs and
# say what to do next. The service is not started: it needs a configuration
# that only the operator can write (secrets, host name, a btrfs data path).
set -e

case "$1" in
configure)
	# The configuration holds secrets: only root reads it.
	install -d -m 0750 -o root -g root /etc/draupnir
	# The default data path; it must become a btrfs mount (see below). 0755
	# like `draupnir setup` makes it: postgres must traverse it, and what lies
	# under it is protected by its own modes.
	install -d -m 0755 -o root -g root /var/lib/draupnir
	if [ -d /run/systemd/system ]; then
		systemctl daemon-reload >/dev/null 2>&1 || true
	fi
	if [ ! -e /etc/draupnir/config.toml ]; then
		cat <<'MSG'
draupnir is installed but not started. Next steps:
  1. cp /etc/draupnir/config.toml.example /etc/draupnir/config.toml
     chmod 0600 /etc/draupnir/config.toml, and set at least shared_secret,
     public_hostname and the HTTPS or insecure port.
  2. Make /var/lib/draupnir a btrfs filesystem (a spare disk, or
     `draupnir setup --size 200G` for a loop-mounted file plus its fstab line).
  3. systemctl enable --now draupnir
See /usr/share/doc/draupnir/operations.md.
MSG
	fi
	;;
esac
exit 0
