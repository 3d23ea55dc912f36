#!/bin/sh
# Runs inside the full-system VM as offloadd-systemtest.service (systemd is
# PID 1): the pytest suite in tests/system (install, upgrade, service, purge
# of the Debian packages in debs/, in the order its conftest.py sets), JUnit
# XML and the journal onto the results disk (/dev/vdb), which the host reads
# back with debugfs.
# The unit powers the VM off when this exits.
set -u
mount -t ext4 /dev/vdb /results || { echo "system test: no results disk"; exit 1; }
out=/results/out
mkdir -p "$out"
uname -r > "$out/kernel"
echo "Debian $(cat /etc/debian_version), $(python3 --version 2>&1), $(nft --version)" > "$out/userspace"
cut -d' ' -f1 /proc/uptime > "$out/guest_uptime_at_start"
# Boot figures (this unit is part of the boot transaction, so systemd-analyze
# cannot answer yet): when multi-user.target was reached, in guest seconds.
echo "multi-user.target reached at $(systemctl show -P ActiveEnterTimestampMonotonic multi-user.target \
    | awk '{printf "%.1f", $1 / 1e6}') s, test started at $(cat "$out/guest_uptime_at_start") s" > "$out/boot"
systemctl --failed --no-legend > "$out/failed-units" 2>&1
cd /opt/offloadd-systemtest || exit 1
PYTHONDONTWRITEBYTECODE=1 python3 -m pytest system -p no:cacheprovider -v -rfEs \
    -o junit_suite_name="system-$(uname -r)" --junitxml="$out/junit.xml"
rc=$?
echo "$rc" > "$out/guest_rc"
journalctl -b --no-pager -o short-monotonic > "$out/journal.txt" 2>&1
# debugfs on the host does not replay the journal: unmount cleanly.
cd /
umount /results || sync
exit "$rc"
