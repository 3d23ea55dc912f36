#!/bin/bash
# Installs everything `make test` needs on a Debian 12 machine, as root:
# apt packages, the project venv, and (unless --no-kernels) the Debian kernels
# the lab VM boots. Idempotent: each step checks first and redoes nothing it
# need not, so a warm run takes a second or two.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
# shellcheck source=lab/common.sh
. "$here/common.sh"

want_kernels=1
want_bench=0
for arg in "$@"; do
    case "$arg" in
        --no-kernels) want_kernels=0 ;;
        --bench) want_bench=1 ;;
        *) die "setup.sh: unknown argument $arg (known: --no-kernels, --bench)" ;;
    esac
done

[ "$(id -u)" = 0 ] || die "setup needs root (apt-get, network namespaces); run it with sudo"

apt_packages=(
    nftables python3-nftables python3-venv python3-dev
    libsystemd-dev pkg-config gcc
    iproute2 iputils-ping conntrack iperf3 procps iptables
    ppp pppoe wireguard-tools tcpdump ethtool
    qemu-system-x86 kmod udev busybox-static
    vagrant prometheus debootstrap e2fsprogs xz-utils
    groff-base
    debhelper dh-python python3-pip python3-setuptools python3-wheel build-essential lintian
)

apt_updated=0
apt_update_once() {
    if [ "$apt_updated" = 0 ]; then
        log "apt-get update"
        apt-get update -qq
        apt_updated=1
    fi
}

missing=()
for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    apt_update_once
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    log "apt packages: present"
fi

# The venv comes from the system Python so that python3-nftables (not on
# PyPI) is importable through --system-site-packages.
venv="$repo/.venv"
stamp="$venv/.offloadd-setup"
want_stamp=$(cat "$repo/pyproject.toml" "$here/setup.sh" | sha256sum | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want_stamp" ]; then
    log "creating venv $venv"
    /usr/bin/python3 -m venv --system-site-packages "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check --upgrade pip
    "$venv/bin/pip" install -q --disable-pip-version-check -e "$repo[test,lab]"
    echo "$want_stamp" > "$stamp"
else
    log "venv: up to date"
fi
if [ "$want_bench" = 1 ] && ! "$venv/bin/python" -c "import matplotlib" 2>/dev/null; then
    log "installing the bench extra (matplotlib, for bench/results/<kernel>.png)"
    "$venv/bin/pip" install -q --disable-pip-version-check -e "$repo[test,lab,bench]"
fi
"$venv/bin/python" -c "import nftables" 2>/dev/null \
    || die "the venv cannot import nftables: install python3-nftables"

if [ "$want_kernels" = 1 ]; then
    for k in $LAB_KERNELS; do
        ensure_kernel "$k"
    done
fi
log "setup complete"
