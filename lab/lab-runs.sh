#!/bin/bash
# Runs make test's lab VMs, two at a time (OFFLOADD_VM_JOBS), longest first,
# each with one vCPU (OFFLOADD_VM_CPUS) when more than one runs.
#
# Why: measured on this project's 2-core machine (2026-12-02, 6.12,
# test_flowtable_dataplane.py, 4 tests): one VM alone with 2 vCPUs 116 s;
# two at once with 1 vCPU each 126 and 127 s (both done in 127 s: 1.8x the
# throughput); two at once with 2 vCPUs each 336 and 342 s (worse than one
# after the other: four TCG vCPU threads on two cores spin on each other's
# locks). The tests do not mind the shared CPU: they wait for states, and the
# few durations they bound are calibrated in their own run (tests/lab/pace.py).
# Each run's output goes to build/logs/lab-<run>.log and is printed whole
# when the run ends, so the log reads one run at a time.
#
# Usage: lab/lab-runs.sh RUN...   where RUN is one of
#   KERNEL[-SUITE][+PART][:ARG,...]  the integration suite (lab/vm-test.sh KERNEL
#                                --userspace SUITE|host [--part PART] [ARG...]),
#                                e.g. 6.1, 7-forky:tests/integration/test_attach.py,
#                                7-trixie+logic:--daemon-logic-only
#   system-SUITE-KERNEL          the full-system test (lab/system-test.sh)
#   demo                         make demo (lab/demo.py on the default kernel):
#                                in the pool, it runs beside the last VM
#                                instead of after it, alone on one core
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cd "$repo"
jobs=${OFFLOADD_VM_JOBS:-2}
[ "$jobs" -gt 1 ] && export OFFLOADD_VM_CPUS=${OFFLOADD_VM_CPUS:-1}
logs=build/logs
mkdir -p "$logs"

command_of() {
    local run=$1 name tests series suite part=""
    name=${run%%:*}
    tests=""
    [ "$name" = "$run" ] || tests=${run#*:}
    tests=${tests//,/ }
    if [ "${name%%+*}" != "$name" ]; then
        part="--part ${name#*+} "
        name=${name%%+*}
    fi
    case "$name" in
        demo)
            echo "lab/vm-run.sh ${KERNEL:-6.1} $repo/.venv/bin/python lab/demo.py" ;;
        system-*-*)
            suite=${name#system-}; suite=${suite%%-*}; series=${name##*-}
            echo "lab/system-test.sh $series $suite" ;;
        *-*) series=${name%%-*}; suite=${name#*-}
            echo "lab/vm-test.sh $series --userspace $suite $part$tests" ;;
        *) echo "lab/vm-test.sh $name --userspace host $part$tests" ;;
    esac
}

declare -A pids=() started=()
failed=()
finish() {
    local name=$1 rc=$2
    echo "===== $name: $(command_of "$name") ($((SECONDS - ${started[$name]})) s, exit $rc) ====="
    cat "$logs/lab-$name.log"
    [ "$rc" = 0 ] || failed+=("$name")
}

# Waits for one run to end and reports it.
reap() {
    local done_pid rc n
    wait -n -p done_pid
    rc=$?
    for n in "${!pids[@]}"; do
        if [ "${pids[$n]}" = "$done_pid" ]; then unset "pids[$n]"; finish "$n" "$rc"; fi
    done
}

for run in "$@"; do
    while [ "${#pids[@]}" -ge "$jobs" ]; do reap; done
    name=${run%%:*}
    started[$name]=$SECONDS
    echo "[lab-runs] starting $name: $(command_of "$run")"
    # shellcheck disable=SC2046
    $(command_of "$run") > "$logs/lab-$name.log" 2>&1 &
    pids[$name]=$!
done
while [ "${#pids[@]}" -gt 0 ]; do reap; done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "[lab-runs] failed: ${failed[*]}"
    exit 1
fi
