# Shared shell helpers for the lab scripts (sourced, not run).
# Kernels are cached outside the repo, somewhere the virtme-ng guest still sees
# (it mounts fresh tmpfs on /tmp, /var/tmp, /var/cache, /var/log).

LAB_KERNELS="6.1 6.12 7"
LAB_CACHE=${OFFLOADD_LAB_CACHE:-${HOME:-/root}/.cache/offloadd-lab}

log() { echo "[lab] $*" >&2; }
die() { echo "[lab] error: $*" >&2; exit 1; }

# Debian 13's backports suite carries the 7.x kernels. It is read through apt
# options of its own (lists, cache, sources under $LAB_CACHE/apt-trixie) and
# used for downloads only: the host's apt sources and state stay untouched.
TRIXIE_APT="$LAB_CACHE/apt-trixie"
trixie_apt_opts() {
    echo "-o Dir::Etc::sourcelist=$TRIXIE_APT/sources.list -o Dir::Etc::sourceparts=-" \
         "-o Dir::State::Lists=$TRIXIE_APT/lists -o Dir::Cache=$TRIXIE_APT/cache" \
         "-o APT::Sandbox::User=root"
}
trixie_apt_update() {
    mkdir -p "$TRIXIE_APT/lists/partial" "$TRIXIE_APT/cache/archives/partial"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie-backports main" \
        > "$TRIXIE_APT/sources.list"
    log "apt-get update (trixie-backports, download-only source in $TRIXIE_APT)"
    # shellcheck disable=SC2046
    apt-get $(trixie_apt_opts) update -qq
}

# Debian package holding kernel series $1, resolved from the apt lists.
# For 7 it is the newest linux-binary-7.*+deb13-amd64 (7.x packages are split
# into linux-binary, linux-modules and linux-base of the same version).
kernel_package() {
    case "$1" in
        # shellcheck disable=SC2046
        7) apt-cache $(trixie_apt_opts) pkgnames linux-binary-7. 2>/dev/null \
                | grep -E '^linux-binary-7\.[0-9]+\.[0-9]+\+deb13-amd64$' | sort -V | tail -1 || true ;;
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
        if [ "$series" = 7 ]; then trixie_apt_update; else apt_update_once; fi
        pkg=$(kernel_package "$series")
    fi
    [ -n "$pkg" ] || die "no Debian package found for kernel $series (apt-get update, check the apt sources)"
    mkdir -p "$LAB_CACHE/kernels"
    log "kernel $series: fetching $pkg"
    if [ "$series" = 7 ]; then
        ver=${pkg#linux-binary-}
        fetch_split_kernel "$ver"
    else
        (cd "$LAB_CACHE/kernels" && apt-get download -qq "$pkg" 2>/dev/null)
        deb=$(ls -t "$LAB_CACHE/kernels/${pkg}"_*.deb | head -1)
        ver=${pkg#linux-image-}
        ver=${ver%-unsigned}
        rm -rf "$LAB_CACHE/kernels/$ver.tmp"
        dpkg-deb -x "$deb" "$LAB_CACHE/kernels/$ver.tmp"
        rm -f "$deb"
    fi
    depmod -b "$LAB_CACHE/kernels/$ver.tmp" "$ver"
    rm -rf "$LAB_CACHE/kernels/$ver"
    mv "$LAB_CACHE/kernels/$ver.tmp" "$LAB_CACHE/kernels/$ver"
    echo "$ver" > "$LAB_CACHE/kernels/$series.version"
    log "kernel $series: $ver ready"
}

# 7.x: image, modules and base (config, modules.order/builtin) come in three
# packages under /usr/lib/modules/<ver>; vng wants boot/vmlinuz-<ver> and
# lib/modules/<ver> in one directory, like the 6.x image packages unpack.
fetch_split_kernel() {
    local ver=$1 tmp="$LAB_CACHE/kernels/$1.tmp" p deb
    rm -rf "$tmp" "$LAB_CACHE/kernels/unpack.$ver"
    mkdir -p "$LAB_CACHE/kernels/unpack.$ver" "$tmp/boot" "$tmp/lib/modules"
    for p in binary modules base; do
        # shellcheck disable=SC2046
        (cd "$LAB_CACHE/kernels" && apt-get $(trixie_apt_opts) download -qq "linux-$p-$ver" 2>/dev/null)
        deb=$(ls -t "$LAB_CACHE/kernels/linux-$p-${ver}"_*.deb | head -1)
        dpkg-deb -x "$deb" "$LAB_CACHE/kernels/unpack.$ver"
        rm -f "$deb"
    done
    mv "$LAB_CACHE/kernels/unpack.$ver/usr/lib/modules/$ver" "$tmp/lib/modules/$ver"
    mv "$tmp/lib/modules/$ver/vmlinuz" "$tmp/boot/vmlinuz-$ver"
    cp "$tmp/lib/modules/$ver/config" "$tmp/boot/config-$ver"
    rm -rf "$LAB_CACHE/kernels/unpack.$ver"
}
