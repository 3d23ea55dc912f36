#!/bin/bash
# Runs one command inside the lab VM (kernel series $1) with the repo as cwd;
# exits with the command's status. Used by `make demo`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
. "$here/common.sh"
series=${1:?usage: vm-run.sh KERNEL COMMAND...}
shift
kdir=$(kernel_dir "$series")
[ -n "$kdir" ] || die "kernel $series is not fetched yet: run lab/setup.sh (or make setup)"
ver=$(basename "$kdir")
log "kernel $series ($ver): booting VM"
# Through a pipe: given a regular file as stdout, vng writes the guest's
# output from offset 0 and overwrites what the caller logged before (seen with
# `make test > log`: everything before the demo was lost).
set +e
PATH="$repo/.venv/bin:$PATH" timeout "${OFFLOADD_VM_TIMEOUT:-1500}" \
    vng --run "$kdir/boot/vmlinuz-$ver" --disable-kvm \
        --cpus "${OFFLOADD_VM_CPUS:-2}" --memory "${OFFLOADD_VM_MEMORY:-2G}" \
        --cwd "$repo" -- "$@" </dev/null 2>&1 | cat
exit "${PIPESTATUS[0]}"
