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
times=()
start=$SECONDS
for step in "$@"; do
    t0=$SECONDS
    make --no-print-directory "$step" 2>&1 | tee "$logs/$step.log"
    rc=${PIPESTATUS[0]}
    echo "[make test] $step: $([ "$rc" = 0 ] && echo ok || echo "FAILED (exit $rc)") after $((SECONDS - t0)) s"
    times+=("$step $((SECONDS - t0)) s")
    [ "$rc" = 0 ] || failed+=("$step")
done
total_min=$(( (SECONDS - start + 59) / 60 ))
budget_min=${OFFLOADD_TEST_BUDGET_MIN:-45}
echo "== time per step: $(IFS=,; echo "${times[*]}" | sed 's/,/, /g'); in all $total_min min =="
# Not a failure: a note that CI's 90 minutes are getting close on a slow day.
if [ "$total_min" -gt "$budget_min" ]; then
    echo "make test: took $total_min min, over its budget of $budget_min min (a slow day must still fit CI's 90): see the VM times per run below"
fi
echo "== integration and system results per run =="
# shellcheck disable=SC2086
.venv/bin/python lab/check_results.py --summary $runs || true
for step in "${failed[@]}"; do
    case "$step" in
        test-vms|test-systems) ;;   # the run summary above says which test, where
        test-lab)
            # The summary above names each failed test; the demo has no results.
            grep -h '^\[lab-runs\] failed:' "$logs/$step.log" | tail -n 1
            if grep -q '^\[lab-runs\] failed:.* demo' "$logs/$step.log"; then
                echo "== the demo failed; its last lines ($logs/lab-demo.log) =="
                tail -n 12 "$logs/lab-demo.log"
            fi ;;
        *) echo "== $step failed; its last lines ($logs/$step.log) =="
           grep -E '^(FAILED|ERROR|E  |[^ ]+:[0-9]+:[0-9]+: )' "$logs/$step.log" | tail -n 12
           tail -n 4 "$logs/$step.log" ;;
    esac
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "make test: FAILED: ${failed[*]} ($total_min min)"
    exit 1
fi
echo "make test: passed ($total_min min)"
