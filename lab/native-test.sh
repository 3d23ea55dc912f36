#!/bin/bash
# The integration suite on this machine's own kernel (no VM): for a Vagrant
# box or any machine whose kernel has flowtables. Same checks as a VM run.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
. "$here/common.sh"
cd "$repo"
.venv/bin/python -m offloadd.kernel.capability || die "this kernel cannot run the integration suite; use make test-vm"
out="$repo/build/results/native"
rm -rf "$out"; mkdir -p "$out"
config=/boot/config-$(uname -r)
[ -f "$config" ] || { zcat /proc/config.gz > "$out/kconfig" && config="$out/kconfig"; }
set +e
"$here/guest-run.sh" "$out" "$config" "$@"
set -e
.venv/bin/python "$here/check_results.py" --kernel native "$out"
