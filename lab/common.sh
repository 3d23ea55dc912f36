# Shared shell helpers for the lab scripts (sourced, not run).
# Kernels are cached outside the repo, somewhere the virtme-ng guest still sees
# (it mounts fresh tmpfs on /tmp, /var/tmp, /var/cache, /var/log).

LAB_KERNELS="6.1 6.12"
LAB_CACHE=${OFFLOADD_LAB_CACHE:-${HOME:-/root}/.cache/offloadd-lab}

log() { echo "[lab] $*" >&2; }
die() { echo "[lab] error: $*" >&2; exit 1; }

# Debian package holding kernel series $1, resolved from the apt lists.
kernel_package() {
    case "$1" in
        6.1) apt-cache depends linux-image-amd64 2>/dev/null \
                | sed -n 's/^ *Depends: \(linux-image-6\.1\.[0-9]*-[0-9]*-amd64\)$/\1/p' | head -1 ;;
        6.12) apt-cache pkgnames linux-image-6.12. 2>/dev/null \
                | grep -E '^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$' | sort -V | tail -1 ;;
        *) return 1 ;;
    esac
}

# Directory of the unpacked kernel for series $1 (empty if not fetched yet).
kernel_dir() {
    local ver
    ver=$(cat "$LAB_CACHE/kernels/$1.version" 2>/dev/null) || return 0
    [ -f "$LAB_CACHE/kernels/$ver/boot/vmlinuz-$ver" ] && echo "$LAB_CACHE/kernels/$ver"
    return 0
}

ensure_kernel() {
    local series=$1 dir pkg deb ver
    dir=$(kernel_dir "$series")
    if [ -n "$dir" ]; then
        log "kernel $series: $(basename "$dir") (cached)"
        return 0
    fi
    pkg=$(kernel_package "$series")
    if [ -z "$pkg" ]; then
        apt_update_once
        pkg=$(kernel_package "$series")
    fi
    [ -n "$pkg" ] || die "no Debian package found for kernel $series (apt-get update, check the apt sources)"
    mkdir -p "$LAB_CACHE/kernels"
    log "kernel $series: fetching $pkg"
    (cd "$LAB_CACHE/kernels" && apt-get download -qq "$pkg" 2>/dev/null)
    deb=$(ls -t "$LAB_CACHE/kernels/${pkg}"_*.deb | head -1)
    ver=${pkg#linux-image-}
    ver=${ver%-unsigned}
    rm -rf "$LAB_CACHE/kernels/$ver.tmp"
    dpkg-deb -x "$deb" "$LAB_CACHE/kernels/$ver.tmp"
    depmod -b "$LAB_CACHE/kernels/$ver.tmp" "$ver"
    rm -rf "$LAB_CACHE/kernels/$ver"
    mv "$LAB_CACHE/kernels/$ver.tmp" "$LAB_CACHE/kernels/$ver"
    rm -f "$deb"
    echo "$ver" > "$LAB_CACHE/kernels/$series.version"
    log "kernel $series: $ver ready"
}
