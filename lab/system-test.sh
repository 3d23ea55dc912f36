#!/bin/bash
# Full-system test: boots the image from lab/system-image.sh with systemd as
# PID 1 (qemu, TCG: nested KVM hangs on these machines). Inside, the unit
# offloadd-systemtest.service runs tests/system: it installs the Debian
# package built from this checkout with apt (a ~test1 build first, then an
# upgrade to this one with an edited config), tests offloadd.service as the
# package installed it (start/READY, hardening, reload, refused reload,
# watchdog restart, traffic offload), purges the package, and powers off. Results come back on a second disk (ext4, read
# with debugfs: no loop mount) and are judged by check_results.py: no
# results, zero tests, a failure or a skip all fail the run.
# Usage: system-test.sh [KERNEL [SUITE]]  (SUITE: bookworm = Debian 12, the
# default, or trixie = Debian 13)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
. "$here/common.sh"

series=${1:-6.1}
suite=${2:-bookworm}
case " $LAB_KERNELS " in *" $series "*) ;; *) die "unknown kernel '$series'; use one of: $LAB_KERNELS" ;; esac
case "$suite" in bookworm|trixie) ;; *) die "unknown Debian suite '$suite' for the system test; use bookworm (Debian 12) or trixie (Debian 13)" ;; esac
name="system-$suite-$series"

t0=$(date +%s.%N)
"$here/system-image.sh" "$series" "$suite"
t1=$(date +%s.%N)
img="$repo/build/system/$suite-$series"
out="$repo/build/results/$name"
rm -rf "$out"
mkdir -p "$out"
results_img="$img/results.img"
rm -f "$results_img"
mkfs.ext4 -q -F -L results "$results_img" 64M

log "system test (Debian $(cat "$img/debian-version"), kernel $(cat "$img/kernel-version")): booting VM, systemd as PID 1"
set +e
timeout "${OFFLOADD_VM_TIMEOUT:-900}" qemu-system-x86_64 \
    -accel tcg -cpu max -smp "${OFFLOADD_VM_CPUS:-2}" -m "${OFFLOADD_VM_MEMORY:-2G}" \
    -machine q35 -nographic -no-reboot -nic none \
    -kernel "$img/vmlinuz" -initrd "$img/initrd.img" \
    -append "console=ttyS0 root=/dev/vda rw panic=-1 loglevel=4 systemd.show_status=auto" \
    -drive "file=$img/root.img,format=raw,if=virtio,snapshot=on" \
    -drive "file=$results_img,format=raw,if=virtio" \
    </dev/null 2>&1 | tee "$out/console.log" | sed -u "s/^/[$name] /"
qemu_rc=${PIPESTATUS[0]}
set -e
t2=$(date +%s.%N)
python3 -c "print(round($t2 - $t1))" > "$out/wall_seconds"

# debugfs reads the disk without mounting it.
if debugfs -R "rdump /out $out" "$results_img" >/dev/null 2>&1 && [ -d "$out/out" ]; then
    mv "$out"/out/* "$out"/ && rmdir "$out/out"
fi
log "system test: image $(python3 -c "print(round($t1 - $t0))") s, VM $(cat "$out/wall_seconds") s (qemu exit $qemu_rc)"
[ -f "$out/boot" ] && log "guest: $(cat "$out/boot")"
"$repo/.venv/bin/python" "$here/check_results.py" --kernel "$name" --vng-rc "$qemu_rc" "$out"
