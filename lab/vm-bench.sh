#!/bin/bash
# `make bench`: boots the lab VM on one kernel and runs the benchmarks inside;
# the results come back through the rw dir as bench/results/<kernel>.json (one
# file per kernel series, e.g. 6.12.json, 7.json), then bench.report writes
# the summary (stdout + <kernel>.txt) and <kernel>.png on the host.
# Cases: dataplane hotplug survival policy scrape footprint (default: all).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
. "$here/common.sh"

series=${1:?usage: vm-bench.sh KERNEL [case...]}
shift
kdir=$(kernel_dir "$series")
[ -n "$kdir" ] || die "kernel $series is not fetched yet: run lab/setup.sh (or make setup)"
ver=$(basename "$kdir")
# The guest writes into its own dir outside build/ (a `make clean` elsewhere
# must not pull it away mid-run); the result is copied back afterwards.
out="$LAB_CACHE/bench/$series.$$"
rm -rf "$out"; mkdir -p "$out" "$repo/bench/results" "$repo/build/bench/$series"
trap 'rm -rf "$out"' EXIT

log "bench on kernel $series ($ver)"
start=$(date +%s)
set +e
PATH="$repo/.venv/bin:$PATH" timeout "${OFFLOADD_BENCH_TIMEOUT:-1800}" \
    vng --run "$kdir/boot/vmlinuz-$ver" --disable-kvm \
        --cpus "${OFFLOADD_VM_CPUS:-2}" --memory "${OFFLOADD_VM_MEMORY:-2G}" \
        --rwdir "$out" --cwd "$repo" \
        -- "$repo/.venv/bin/python" -m bench.run --out "$out/latest.json" "$@" \
        </dev/null 2>&1 | sed -u "s/^/[vm $series] /"
set -e
[ -s "$out/latest.json" ] || die "the benchmark wrote no results (see the output above)"
wall=$(( $(date +%s) - start ))
res="$repo/bench/results"
cp "$out/latest.json" "$repo/build/bench/$series/latest.json"
# Cases this run did not run keep their earlier figures (marked with their date).
prev="$repo/build/bench/$series/previous.json"
rm -f "$prev"; [ -f "$res/$series.json" ] && cp "$res/$series.json" "$prev"
cp "$out/latest.json" "$res/$series.json"
log "wrote bench/results/$series.json (wall ${wall} s)"
"$repo/.venv/bin/python" -m bench.report "$res/$series.json" --wall-s "$wall" \
    --keep-from "$prev" --txt "$res/$series.txt" --png "$res/$series.png"
