# Debian roots for the lab VMs (sourced, not run; needs common.sh first).
#
# Why: the integration suite normally runs on the host's own root (Debian 12:
# Python 3.11, nftables 1.0.6), shared into the VM read-only. A gateway built
# today runs Debian 13 (Python 3.13, nftables 1.1.3), and the kernel wildcard
# hooks need nftables >= 1.1.6, which only testing (forky) and unstable have
# (1.1.7, Python 3.14).
# So the VM can boot with a debootstrapped root of another Debian suite
# instead (vng --root), and the full-system test's image starts from one.
#
# Two kinds of root, each cached under $LAB_CACHE/roots/<suite>-<purpose> with
# a stamp naming what went in (cold: ~35 s each from the package registry):
#   system  systemd, the package's dependencies, pytest (lab/system-image.sh)
#   vm      the integration suite's tools (nft, conntrack, iperf3, prometheus),
#           python3-nftables and pytest from the suite, and offloadd's PyPI
#           dependencies as the Debian package vendors them (debian/vendor.txt,
#           unpacked into /opt/offloadd-lab/site: pure-Python wheels, so one
#           download serves every Python). The repo is not in the root: the
#           VM mounts it, and guest-run.sh puts it on PYTHONPATH.

LAB_SUITES="bookworm trixie forky sid"

# No netbase on purpose: without /etc/protocols nft lists `meta l4proto
# { 6, 17 }`, which offloadd's read-back must still match (it once did not and
# never got READY).
# procps: the unit's ExecReload=/bin/kill comes from it (203/EXEC without it).
# Everything the package Depends on is here (checked with apt-get -s).
ROOT_PACKAGES_system=procps,systemd,systemd-sysv,udev,kmod,nftables,iproute2,conntrack,busybox-static,python3,python3-nftables,python3-systemd,python3-pytest
# udev: without it the guest script's output and exit status are lost (vng).
# iptables: the firewalls-beside tests; ppp, pppoe, wireguard-tools, ethtool:
# the real gateway of tests/lab/gateway.py.
ROOT_PACKAGES_vm=procps,udev,kmod,nftables,iproute2,iputils-ping,conntrack,iperf3,iptables,ppp,pppoe,wireguard-tools,ethtool,prometheus,python3,python3-nftables,python3-systemd,python3-pytest

# The Debian mirror this machine's apt uses (deb822 or one-line sources).
debian_mirror() {
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list \
        2>/dev/null | sed -n 's/^URIs: *\(http[^ ]*\/debian\)\/*$/\1/p
            s/^deb  *\(\[[^]]*\]  *\)\{0,1\}\(http[^ ]*\/debian\)\/*  *bookworm .*/\2/p' | head -1
}

# chroot with a clean environment: the host's PIP_* settings (local indexes,
# find-links dirs) mean nothing inside the root.
in_root() {
    local dir=$1
    shift
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 chroot "$dir" "$@"
}

# The vendored wheels of debian/vendor.txt, fetched once (lab/vendor-wheels.sh).
lab_wheels() {
    "$repo/lab/vendor-wheels.sh" "$LAB_CACHE/wheels" || die "could not fetch the wheels of debian/vendor.txt"
    echo "$LAB_CACHE/wheels"
}

# Path of the cached root for suite $1 and purpose $2 (system|vm); builds it
# when missing or stale. Needs root (debootstrap, chroot).
ensure_root() {
    local suite=$1 purpose=$2 dir packages want have mirror t0 wheels w script
    case " $LAB_SUITES " in *" $suite "*) ;; *) die "unknown Debian suite '$suite'; use one of: $LAB_SUITES" ;; esac
    case "$purpose" in
        system) packages=$ROOT_PACKAGES_system ;;
        vm) packages=$ROOT_PACKAGES_vm ;;
        *) die "unknown root purpose '$purpose' (system or vm)" ;;
    esac
    [ "$(id -u)" = 0 ] || die "building a Debian root needs root (debootstrap, chroot)"
    command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap"
    # One build per suite at a time (make test runs two lab VMs at once): a
    # suite's roots share debootstrap's package cache. Held until the
    # caller's $(ensure_root ...) subshell ends.
    mkdir -p "$LAB_CACHE/roots"
    exec 7>"$LAB_CACHE/roots/.lock-$suite"
    flock 7
    want=$(printf 'v3\n%s\n%s\n%s\n' "$suite" "$packages" \
        "$([ "$purpose" = vm ] && cat "$repo/debian/vendor.txt")" | sha256sum | cut -d' ' -f1)
    # Named by what went in: a checkout with another package list builds a
    # root of its own beside this one, never over one a running VM uses.
    dir="$LAB_CACHE/roots/$suite-$purpose-${want:0:12}"
    find "$LAB_CACHE/roots" -mindepth 1 -maxdepth 1 -type d -name "$suite-$purpose-*" \
        ! -name "$(basename "$dir")" -mtime +2 -exec rm -rf {} + 2>/dev/null || true
    have=$(cat "$dir/.offloadd-root" 2>/dev/null || true)
    if [ "$have" = "$want" ]; then
        touch "$dir"  # in use: not pruned
        log "$suite $purpose root: cached ($dir)"
        echo "$dir"
        return 0
    fi
    mirror=${OFFLOADD_DEBIAN_MIRROR:-$(debian_mirror || true)}
    mirror=${mirror:-http://deb.debian.org/debian}
    t0=$(date +%s)
    log "$suite $purpose root: debootstrap $suite from $mirror (packages: $packages)"
    rm -rf "$dir.tmp"
    mkdir -p "$LAB_CACHE/debs-$suite"
    # Debian 12's debootstrap has no script for suites newer than itself
    # (forky); they bootstrap like unstable.
    script=/usr/share/debootstrap/scripts/$suite
    [ -e "$script" ] || script=/usr/share/debootstrap/scripts/sid
    debootstrap --variant=minbase --cache-dir="$LAB_CACHE/debs-$suite" --include="$packages" \
        "$suite" "$dir.tmp" "$mirror" "$script" > "$LAB_CACHE/debootstrap-$suite-$purpose.log" 2>&1 \
        || { tail -20 "$LAB_CACHE/debootstrap-$suite-$purpose.log" >&2
             die "debootstrap $suite failed (log: $LAB_CACHE/debootstrap-$suite-$purpose.log)"; }
    rm -rf "$dir.tmp"/var/cache/apt/archives/*.deb "$dir.tmp"/var/lib/apt/lists/*
    mkdir -p "$dir.tmp/var/lib/apt/lists/partial"
    if [ "$purpose" = system ]; then
        # A quiet, quick boot: nothing here needs timers or a login prompt.
        for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer \
                 getty@tty1.service serial-getty@ttyS0.service systemd-timesyncd.service; do
            ln -sf /dev/null "$dir.tmp/etc/systemd/system/$u"
        done
        echo offloadd-system > "$dir.tmp/etc/hostname"
        : > "$dir.tmp/etc/machine-id"
    else
        wheels=$(lab_wheels)
        mkdir -p "$dir.tmp/opt/offloadd-lab/site"
        for w in "$wheels"/*.whl; do
            /usr/bin/python3 -m zipfile -e "$w" "$dir.tmp/opt/offloadd-lab/site/"
        done
        in_root "$dir.tmp" python3 -c "import sys; sys.path.insert(0, '/opt/offloadd-lab/site'); import pyroute2, prometheus_client, nftables, pytest" \
            || die "the $suite vm root cannot import offloadd's dependencies"
    fi
    echo "$want" > "$dir.tmp/.offloadd-root"
    rm -rf "$dir"
    mv "$dir.tmp" "$dir"
    log "$suite $purpose root: ready in $(( $(date +%s) - t0 )) s ($(du -sh "$dir" | cut -f1))"
    echo "$dir"
}

# The vng arguments for a guest of userspace $1 (host: this machine's own
# root, shared read-only; else a vm root of that suite) on kernel version $2
# (unpacked in $3), with the repo at its own path and the host dir $4
# writable. Sets vm_args (vng's --root/--rodir/--rwdir/--cwd) and vm_out
# (where the guest sees $4). Shared by lab/vm-test.sh and lab/vm-bench.sh.
vm_userspace() {
    local suite=$1 ver=$2 kdir=$3 out=$4 root
    vm_out=$out
    vm_args=(--rwdir "$out" --cwd "$repo")
    vm_root=
    [ "$suite" != host ] || return 0
    root=$(ensure_root "$suite" vm)
    vm_root=$root
    # $4 apart from the repo: under the read-only repo mount a read-write one
    # was shadowed (seen: "Read-only file system").
    vm_out=/offloadd-out
    prepare_vm_root "$root" "$ver" "$kdir" "$repo" "$vm_out"
    # vng takes --cwd as a host path under --root; the repo is mounted there.
    vm_args=(--root "$root" --rodir "$repo=$repo" --rwdir "$vm_out=$out" --cwd "$root$repo")
}

# The bytecode the guest's Python needs, compiled here at native speed for
# its pycache prefix (lab/pycache.py says why) into $2/pycache.tar, which
# guest-run.sh unpacks: with the interpreter and sys.path the guest will use
# (guest-run.sh sets them up the same way), in the vm root $1 through a
# chroot that sees the repo at its own path; in the host's root when $1 is
# empty. Best effort: without it the guest compiles as it goes.
guest_bytecode() {
    local root=$1 out=$2 stage=$2/pycache
    local what=(offloadd tests.integration tests.lab _pytest pluggy iniconfig _hypothesis_pytestplugin)
    rm -rf "$stage" "$out/pycache.tar"
    mkdir -p "$stage"
    if [ -z "$root" ]; then
        local labpy=$out/pycache-python
        PYTHONPYCACHEPREFIX=$stage PYTHONPATH=$("$repo/lab/lab-python.sh" "$labpy" "$repo") \
            "$labpy/bin/python3" "$repo/lab/pycache.py" "${what[@]}" >/dev/null 2>&1 || true
    else
        mkdir -p "$root$repo"
        unshare -m sh -c 'mount --bind "$1" "$2$1" && r=$2 && shift 2 && exec chroot "$r" "$@"' \
            sh "$repo" "$root" env PYTHONPYCACHEPREFIX="$stage" \
            PYTHONPATH="/opt/offloadd-lab/site:$repo" python3 "$repo/lab/pycache.py" \
            "${what[@]}" >/dev/null 2>&1 || true
    fi
    tar -C "$stage" -cf "$out/pycache.tar" . 2>/dev/null || rm -f "$out/pycache.tar"
    rm -rf "$stage" "${labpy:-}"
    [ -s "$out/pycache.tar" ] || log "no bytecode for the guest (it compiles as it goes)"
}

# Makes kernel $2 (version $3, unpacked in $4) and the host directories given
# after it visible in the vm root $1: the modules where modprobe looks (hard
# links when on the same filesystem), and empty mount points for vng's
# --rodir/--rwdir.
prepare_vm_root() {
    local root=$1 ver=$2 kdir=$3 d
    shift 3
    if [ ! -d "$root/usr/lib/modules/$ver" ]; then
        mkdir -p "$root/usr/lib/modules"
        cp -al "$kdir/lib/modules/$ver" "$root/usr/lib/modules/" 2>/dev/null \
            || cp -a "$kdir/lib/modules/$ver" "$root/usr/lib/modules/"
        rm -f "$root/usr/lib/modules/$ver/build" "$root/usr/lib/modules/$ver/source"
    fi
    for d in "$@"; do
        mkdir -p "$root$d"
    done
}
