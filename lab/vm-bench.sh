#!/bin/bash
# `make bench`: boots the lab VM on one kernel and runs the benchmarks inside;
# the results come back through the rw dir as bench/results/<kernel>.json (one
# file per kernel series, e.g. 6.12.json, 7.json), then bench.report writes
# the summary (stdout + <kernel>.txt) and <kernel>.png on the host.
# Cases: dataplane hotplug first_offload survival policy scrape footprint
# (default: all but first_offload, which is the last part of hotplug alone).
# With --userspace SUITE the guest boots a Debian root of that suite
# (lab/roots.sh, as lab/vm-test.sh does) and the results are
# <kernel>-<suite>.json: `vm-bench.sh 7 --userspace forky first_offload`
# times the kernel wildcard attach (nftables >= 1.1.6).
# Usage: vm-bench.sh KERNEL [--userspace SUITE] [case...]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
. "$here/common.sh"
# shellcheck source=lab/roots.sh
. "$here/roots.sh"

series=${1:?usage: vm-bench.sh KERNEL [--userspace SUITE] [case...]}
shift
suite=host
if [ "${1:-}" = --userspace ]; then
    suite=${2:?--userspace needs a Debian suite: ${LAB_SUITES// /|}}
    shift 2
fi
kdir=$(kernel_dir "$series")
[ -n "$kdir" ] || die "kernel $series is not fetched yet: run lab/setup.sh (or make setup)"
ver=$(basename "$kdir")
run=$series
[ "$suite" = host ] || run="$series-$suite"
# The guest writes into its own dir outside build/ (a `make clean` elsewhere
# must not pull it away mid-run); the result is copied back afterwards.
out="$LAB_CACHE/bench/$run.$$"
rm -rf "$out"; mkdir -p "$out" "$repo/bench/results" "$repo/build/bench/$run"
trap 'rm -rf "$out"' EXIT
vm_userspace "$suite" "$ver" "$kdir" "$out"
py=("$repo/.venv/bin/python")
if [ "$suite" != host ]; then
    # The root's own Python with offloadd's vendored dependencies (guest-run.sh).
    py=(env PYTHONDONTWRITEBYTECODE=1 "PYTHONPATH=/opt/offloadd-lab/site:$repo" /usr/bin/python3)
fi

# The scale case holds a million flows (conntrack, flowtable, the gate's two
# sets): several GiB in the guest.
memory=${OFFLOADD_VM_MEMORY:-2G}
case " $* " in *" scale "*) memory=${OFFLOADD_VM_MEMORY:-8G} ;; esac

log "bench on kernel $series ($ver), userspace $suite"
start=$(date +%s)
set +e
PATH="$repo/.venv/bin:$PATH" timeout "${OFFLOADD_BENCH_TIMEOUT:-5400}" \
    vng --run "$kdir/boot/vmlinuz-$ver" --disable-kvm \
        --cpus "${OFFLOADD_VM_CPUS:-2}" --memory "$memory" \
        "${vm_args[@]}" \
        -- "${py[@]}" -m bench.run --out "$vm_out/latest.json" "$@" \
        </dev/null 2>&1 | sed -u "s/^/[vm $run] /"
set -e
[ -s "$out/latest.json" ] || die "the benchmark wrote no results (see the output above)"
wall=$(( $(date +%s) - start ))
res="$repo/bench/results"
cp "$out/latest.json" "$repo/build/bench/$run/latest.json"
# Cases this run did not run keep their earlier figures (marked with their date).
prev="$repo/build/bench/$run/previous.json"
rm -f "$prev"; [ -f "$res/$run.json" ] && cp "$res/$run.json" "$prev"
cp "$out/latest.json" "$res/$run.json"
log "wrote bench/results/$run.json (wall ${wall} s)"
"$repo/.venv/bin/python" -m bench.report "$res/$run.json" --wall-s "$wall" \
    --keep-from "$prev" --txt "$res/$run.txt" --png "$res/$run.png"
