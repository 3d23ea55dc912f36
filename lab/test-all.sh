#!/bin/bash
# make test's driver: runs every step even after one fails, then ends with what
# failed and why. CI shows only the tail of a 35-minute log, so the last lines
# must name the failed step, the failed test, its run and its line; a step that
# stopped the others (as `make a b c` does) would hide what the rest found.
#
# Usage: lab/test-all.sh "RUN..." STEP...   (RUN: the build/results/ runs to judge)
set -uo pipefail
cd "$(dirname "$0")/.."
runs=$1; shift
logs=build/logs
mkdir -p "$logs"
failed=()
start=$SECONDS
for step in "$@"; do
    t0=$SECONDS
    make --no-print-directory "$step" 2>&1 | tee "$logs/$step.log"
    rc=${PIPESTATUS[0]}
    echo "[make test] $step: $([ "$rc" = 0 ] && echo ok || echo "FAILED (exit $rc)") after $((SECONDS - t0)) s"
    [ "$rc" = 0 ] || failed+=("$step")
done
echo "== integration and system results per run =="
# shellcheck disable=SC2086
.venv/bin/python lab/check_results.py --summary $runs || true
for step in "${failed[@]}"; do
    case "$step" in
        test-vms|test-systems) ;;   # the run summary above says which test, where
        *) echo "== $step failed; its last lines ($logs/$step.log) =="
           grep -E '^(FAILED|ERROR|E  |[^ ]+:[0-9]+:[0-9]+: )' "$logs/$step.log" | tail -n 12
           tail -n 4 "$logs/$step.log" ;;
    esac
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "make test: FAILED: ${failed[*]} ($(( (SECONDS - start) / 60 )) min)"
    exit 1
fi
echo "make test: passed ($(( (SECONDS - start) / 60 )) min)"
