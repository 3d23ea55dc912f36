#!/bin/bash
# A slow day, on purpose: runs COMMAND with one busy loop per core beside it
# (same priority as the lab VMs), so every VM gets about half the CPU it
# would get alone: the suite must pass like that too (`make test-slow`).
# The busy loops end with the command; it says how long it took.
#
# Usage: lab/slow-day.sh COMMAND...
set -uo pipefail
[ $# -gt 0 ] || { echo "usage: lab/slow-day.sh COMMAND..." >&2; exit 2; }
n=${OFFLOADD_SLOW_LOOPS:-$(nproc)}
loops=()
for _ in $(seq "$n"); do
    sh -c 'while :; do :; done' &
    loops+=($!)
done
trap 'kill "${loops[@]}" 2>/dev/null' EXIT
echo "[slow-day] $n busy loop(s) beside: $*"
t0=$SECONDS
"$@"
rc=$?
echo "[slow-day] $* exited $rc after $(( (SECONDS - t0) / 60 )) min $(( (SECONDS - t0) % 60 )) s with $n busy loop(s) beside it"
exit $rc
