#!/bin/bash
# Boots the lab VM on one Debian kernel (virtme-ng, TCG: nested KVM hangs on
# these machines) and runs the integration suite inside it. The guest shares
# the host's root filesystem read-only (Debian 12 userspace), or with
# --userspace SUITE a Debian root of that suite (lab/roots.sh: trixie =
# Debian 13, forky = testing,
# sid = unstable) with the repo mounted in. Results come back
# through --rwdir as JUnit XML plus the guest's exit status, and
# check_results.py refuses a run that collected nothing, skipped anything, or
# left no readable result.
# Usage: vm-test.sh KERNEL [--userspace SUITE] [--part LABEL] [pytest args...]
# (--part: one of several runs of one kernel and root, its results under
# build/results/KERNEL[-SUITE]-LABEL)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
. "$here/common.sh"
# shellcheck source=lab/roots.sh
. "$here/roots.sh"

series=${1:?usage: vm-test.sh KERNEL [--userspace SUITE] [pytest args...]  (KERNEL: ${LAB_KERNELS// /|})}
shift
suite=host
if [ "${1:-}" = --userspace ]; then
    suite=${2:?--userspace needs a Debian suite: ${LAB_SUITES// /|}}
    shift 2
fi
part=""
if [ "${1:-}" = --part ]; then
    part=${2:?--part needs a label}
    shift 2
fi
case " $LAB_KERNELS " in *" $series "*) ;; *) die "unknown kernel '$series'; use one of: $LAB_KERNELS" ;; esac

kdir=$(kernel_dir "$series")
[ -n "$kdir" ] || die "kernel $series is not fetched yet: run lab/setup.sh (or make setup)"
ver=$(basename "$kdir")

# The whole suite on an older kernel leaves out the tests marked one_kernel
# (the CLI's status/reload/check, the dashboard's queries, the mixed-config
# attach modes): they check offloadd, not the kernel, and run on the newest
# kernel. This keeps a fresh machine's `make test` within its 45 minutes.
args=("$@")
newest=${LAB_KERNELS##* }
if [ "$series" != "$newest" ] && ! printf '%s\n' "$@" | grep -q '^tests/'; then
    args+=(--not-newest-kernel)
fi

run=$series
[ "$suite" = host ] || run="$series-$suite"
[ -z "$part" ] || run="$run-$part"
# Debian testing's and unstable's nftables (>= 1.1.6) have wildcard hooks.
case "$suite" in forky|sid) args+=(--with-wildcards) ;; esac
out="$repo/build/results/$run"
rm -rf "$out"
mkdir -p "$out"
# The capability test's ground truth, where a guest with another root sees it.
cp "$kdir/boot/config-$ver" "$out/kernel-config"
vm_userspace "$suite" "$ver" "$kdir" "$out"
guest_bytecode "$vm_root" "$out"

# A boot that never reaches the test runner is booted again (at most 3 boots):
# 7.3.4 under TCG with 2 vCPUs now and then oopses at boot (int3 in
# sched_clock_cpu while static keys are patched, before init runs; seen
# 2026-11-26), which says nothing about offloadd. A guest whose kernel died
# while its tests ran (an Oops or panic on the console: the kernel's warnings
# are printed, loglevel=5) is run again once, and the results say so
# (rerun-after-kernel-death, console-died.log): a 7.3.4 guest died 2 tests
# into a run on 2026-11-26, before the kernel's log was printed (likely the
# same artifact; not confirmed). Anything else a guest that started its
# tests did stands, whatever it is.
# Each boot may take OFFLOADD_VM_TIMEOUT (default 3600 s): the longest run
# (7.3.4 + Debian 13, every test) took 1548 s on a fresh machine with one
# vCPU, and a slow day (lab/slow-day.sh) makes the VMs about 2x slower.
# pytest's arguments go to the guest in a file: virtme-ng hands the command
# to the guest on the kernel command line, which a long --deselect list
# overflowed (6.12's: every boot hung, qemu idle, 2026-12-02).
: > "$out/pytest-args"
[ "${#args[@]}" -eq 0 ] || printf '%s\n' "${args[@]}" > "$out/pytest-args"
start=$(date +%s.%N)
died=0
for boot in 1 2 3 4; do
    if [ "$boot" = 1 ]; then
        log "kernel $series ($ver), userspace $suite: booting VM"
    else
        log "kernel $series ($ver): booting VM again (boot $boot)"
    fi
    # A boot that hangs (seen 2026-12-02: 6.12 under a slow day's load, 4 s of
    # CPU in 27 min, no console output) is stopped once no guest has shown
    # up for OFFLOADD_VM_BOOT_TIMEOUT (guest-run.sh writes $out/kernel first
    # thing; a slow day's boot took 70 s) and booted again below, instead of
    # waiting out the whole run's timeout.
    (
        waited=0
        while [ "$waited" -lt "${OFFLOADD_VM_BOOT_TIMEOUT:-600}" ]; do
            [ -e "$out/kernel" ] && exit 0
            sleep 5
            waited=$((waited + 5))
        done
        log "kernel $series: no guest after ${waited} s: stopping this boot"
        # (qemu itself may not have started yet: until it has, and is gone)
        until pkill -TERM -f "qemu-system.*path=$out,"; do sleep 2; done
    ) &
    watchdog=$!
    set +e
    PATH="$repo/.venv/bin:$PATH" timeout "${OFFLOADD_VM_TIMEOUT:-3600}" \
        vng --run "$kdir/boot/vmlinuz-$ver" --disable-kvm \
            --cpus "${OFFLOADD_VM_CPUS:-2}" --memory "${OFFLOADD_VM_MEMORY:-2G}" \
            "${vm_args[@]}" --append loglevel=5 ${OFFLOADD_VNG_EXTRA:-} \
            -- "$here/guest-run.sh" "$vm_out" "$vm_out/kernel-config" </dev/null 2>&1 | tee "$out/console.log" | sed -u "s/^/[vm $run] /"
    vng_rc=${PIPESTATUS[0]}
    kill "$watchdog" 2>/dev/null
    wait "$watchdog" 2>/dev/null
    set -e
    if [ -e "$out/guest_rc" ] || [ "$vng_rc" = 0 ]; then
        break
    fi
    why=$(grep -m1 -E "Oops|Kernel panic|BUG:" "$out/console.log" || true)
    # guest-run.sh writes $out/kernel first thing: its absence means no test ran.
    if [ -e "$out/kernel" ]; then
        if [ -z "$why" ] || [ "$died" = 1 ]; then
            break
        fi
        died=1
        mv "$out/console.log" "$out/console-died.log"
        rm -f "$out/kernel" "$out/nft-version" "$out/userspace" "$out/guest_uptime_at_start" \
              "$out/junit.xml"
        echo "$why" > "$out/rerun-after-kernel-death"
        log "kernel $series: the guest's kernel died during the tests ($why); running them again, once"
        continue
    fi
    if [ "$boot" -ge 3 ]; then
        break
    fi
    mv "$out/console.log" "$out/console-failed-boot-$boot.log"
    log "kernel $series: the VM stopped before the tests started (vng exit $vng_rc${why:+; $why}); booting again"
done
end=$(date +%s.%N)
python3 -c "print(round($end - $start))" > "$out/wall_seconds"

"$repo/.venv/bin/python" "$here/check_results.py" --kernel "$run" --vng-rc "$vng_rc" "$out"
