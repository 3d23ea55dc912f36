#!/bin/bash
# Builds the disk image for the full-system test (systemd as PID 1), as root:
#   1. a minimal Debian root of SUITE (bookworm = Debian 12, trixie = Debian
#      13; debootstrap, minbase) with systemd, nftables, conntrack, python3 +
#      python3-nftables/python3-systemd (the Debian package's dependencies:
#      the VM has no network, so they must be here) and python3-pytest.
#      Cached by lab/roots.sh (a stamp names what went in; cold ~35 s).
#   2. per run: the Debian package built twice from this checkout (its
#      version, and the same tree as <version>~test1 to upgrade from; see
#      lab/build-deb.sh), checked to install offline in a copy of that root,
#      then copied into it with the kernel's modules and the in-VM test
#      (tests/system, run by offloadd-systemtest.service at boot), which
#      installs, upgrades and purges the package with apt; made into an ext4
#      image with mkfs.ext4 -d (no loop mount needed). offloadd itself is not
#      installed in the image: the test does that.
#   3. a tiny initramfs (busybox from the root) that loads virtio_blk + ext4
#      (modules in Debian's kernels), mounts /dev/vda and execs systemd.
# Usage: system-image.sh KERNEL [SUITE]  (SUITE: bookworm, the default, or trixie)
# Output: build/system/SUITE-KERNEL/{root.img,initrd.img,vmlinuz}.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
# shellcheck source=lab/common.sh
. "$here/common.sh"
# shellcheck source=lab/roots.sh
. "$here/roots.sh"

series=${1:-6.1}
suite=${2:-bookworm}
[ "$(id -u)" = 0 ] || die "system-image.sh needs root (debootstrap, chroot)"
command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap"
command -v mkfs.ext4 >/dev/null || die "mkfs.ext4 is missing: apt-get install e2fsprogs"
kdir=$(kernel_dir "$series")
[ -n "$kdir" ] || die "kernel $series is not fetched yet: run lab/setup.sh (or make setup)"
kver=$(basename "$kdir")

# ---- 1. the cached Debian root (lab/roots.sh) ---------------------------
sysroot=$(ensure_root "$suite" system)

# ---- 2. this checkout's package, twice, beside a copy of it --------------------
out="$repo/build/system/$suite-$series"
stage="$out/root"
debs="$out/debs"
mkdir -p "$out"
rm -rf "$stage" "$out/wheel" "$debs"
log "image: building the Debian package (this version and ~test1, to upgrade from)"
"$here/build-deb.sh" --out "$debs"
"$here/build-deb.sh" --suffix "~test1" --out "$debs"
[ "$(find "$debs" -name 'offloadd_*_all.deb' | wc -l)" = 2 ] || die "expected two packages in $debs"
cp -a "$sysroot" "$stage"
mkdir -p "$stage/opt/offloadd-systemtest/debs"
cp "$debs"/offloadd_*_all.deb "$stage/opt/offloadd-systemtest/debs/"
# The VM has no network: apt there must find every dependency installed.
for deb in "$stage"/opt/offloadd-systemtest/debs/*.deb; do
    in_root "$stage" apt-get install -s -q "/opt/offloadd-systemtest/debs/$(basename "$deb")" \
        > "$out/apt-simulate.log" 2>&1 \
        || die "the image cannot install $(basename "$deb") offline (add its dependencies to ROOT_PACKAGES_system in lab/roots.sh): $(tail -5 "$out/apt-simulate.log")"
    grep -q '^Inst offloadd ' "$out/apt-simulate.log" \
        || die "apt-get -s would not install offloadd: $(cat "$out/apt-simulate.log")"
    if grep '^Inst ' "$out/apt-simulate.log" | grep -qv '^Inst offloadd '; then
        die "the package needs more than the image has: $(grep '^Inst ' "$out/apt-simulate.log")"
    fi
done

# Test-only: a short watchdog so that the hang test takes seconds, not 30+.
# In place before the package is: the unit is offloadd.service as the package
# installs it, with this one drop-in.
install -D -m644 /dev/stdin "$stage/etc/systemd/system/offloadd.service.d/50-systemtest.conf" <<'EOF'
[Service]
WatchdogSec=10
EOF

# The kernel's modules, so that systemd-modules-load and autoloading work.
mkdir -p "$stage/lib/modules"
cp -a "$kdir/lib/modules/$kver" "$stage/lib/modules/"
rm -f "$stage/lib/modules/$kver/build" "$stage/lib/modules/$kver/source"

# The in-VM test and the unit that runs it once the system is up.
mkdir -p "$stage/opt/offloadd-systemtest"
cp -a "$repo/tests/system" "$stage/opt/offloadd-systemtest/"
rm -rf "$stage/opt/offloadd-systemtest/system/__pycache__"
install -m755 "$here/system-guest-run.sh" "$stage/opt/offloadd-systemtest/run.sh"
install -D -m644 /dev/stdin "$stage/etc/systemd/system/offloadd-systemtest.service" <<'EOF'
[Unit]
Description=offloadd full-system test
After=multi-user.target
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
ExecStart=/opt/offloadd-systemtest/run.sh
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=20min

[Install]
WantedBy=multi-user.target
EOF
mkdir -p "$stage/etc/systemd/system/multi-user.target.wants"
ln -sf /etc/systemd/system/offloadd-systemtest.service \
    "$stage/etc/systemd/system/multi-user.target.wants/offloadd-systemtest.service"
mkdir -p "$stage/results"

size_mb=$(( $(du -sm "$stage" | cut -f1) * 3 / 2 + 256 ))
rm -f "$out/root.img"
mkfs.ext4 -q -F -L offloadd-root -d "$stage" "$out/root.img" "${size_mb}M"
rm -rf "$stage"

# ---- 3. the initramfs ------------------------------------------------------
ird="$out/initrd"
rm -rf "$ird"
mkdir -p "$ird/bin" "$ird/mod"
cp "$sysroot/bin/busybox" "$ird/bin/busybox"
i=0
while read -r _ path; do
    [ -n "$path" ] || continue
    i=$((i + 1))
    name=$(printf '%02d-%s' "$i" "$(basename "${path%.xz}")")
    case "$path" in
        *.xz) xz -dc "$path" > "$ird/mod/$name" ;;
        *.zst) zstd -qdc "$path" > "$ird/mod/$name" ;;
        *) cp "$path" "$ird/mod/$name" ;;
    esac
done < <(modprobe -d "$kdir" -S "$kver" --show-depends -a virtio_pci virtio_blk crc32c_generic ext4 \
         | grep '^insmod ' | awk '!seen[$2]++')
cat > "$ird/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /newroot
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in /mod/*.ko; do insmod "$m" 2>/dev/null; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
mount -t ext4 -o rw /dev/vda /newroot || { echo "initramfs: cannot mount /dev/vda"; ls /dev; poweroff -f; }
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot /lib/systemd/systemd
echo "initramfs: switch_root failed"; poweroff -f
EOF
chmod 755 "$ird/init"
(cd "$ird" && find . | "$sysroot/bin/busybox" cpio -o -H newc 2>/dev/null | gzip -1) > "$out/initrd.img"
rm -rf "$ird"
cp "$kdir/boot/vmlinuz-$kver" "$out/vmlinuz"
echo "$kver" > "$out/kernel-version"
echo "$suite $(cat "$sysroot/etc/debian_version")" > "$out/debian-version"
log "image: $out/root.img (${size_mb} MiB, $(cd "$debs" && echo offloadd_*_all.deb)), kernel $kver"
