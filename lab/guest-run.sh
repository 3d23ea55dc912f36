#!/bin/bash
# Runs inside the lab VM (as root, kernel under test): records what the guest
# is, then runs the integration suite with JUnit output into the rw results dir.
set -u
out=$1
export OFFLOADD_KERNEL_CONFIG=$2   # ground truth for the capability test
shift 2
export PYTHONDONTWRITEBYTECODE=1   # the shared root filesystem is read-only
uname -r > "$out/kernel"
nft --version > "$out/nft-version" 2>&1
# Boot time as the guest saw it, for the issue notes.
cut -d' ' -f1 /proc/uptime > "$out/guest_uptime_at_start"
# Test paths given on the command line replace the whole suite.
suite=tests/integration
for a in "$@"; do case "$a" in tests/*) suite= ;; esac; done
.venv/bin/python -m pytest $suite -p no:cacheprovider \
    -o junit_suite_name="integration-$(uname -r)" \
    --junitxml="$out/junit.xml" -rfEs "$@"
rc=$?
echo "$rc" > "$out/guest_rc"
exit "$rc"
