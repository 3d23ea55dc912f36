#!/bin/bash
# Runs inside the lab VM (as root, kernel under test): records what the guest
# is, then runs the integration suite with JUnit output into the rw results dir.
set -u
out=$1
export OFFLOADD_KERNEL_CONFIG=$2   # ground truth for the capability test
shift 2
# pytest's arguments, one a line (vm-test.sh: not on the kernel command line).
if [ -s "$out/pytest-args" ]; then
    mapfile -t extra < "$out/pytest-args"
    set -- "$@" "${extra[@]}"
fi
# The shared root and the repo are read-only: bytecode lives on the guest's
# tmpfs, which is also faster to read than the 9p mounts; vm-test.sh compiled
# what the suite imports for this guest's Python before the boot
# (lab/pycache.py).
export PYTHONPYCACHEPREFIX=/tmp/offloadd-pycache
mkdir -p "$PYTHONPYCACHEPREFIX"
[ ! -s "$out/pycache.tar" ] || tar -C "$PYTHONPYCACHEPREFIX" -xf "$out/pycache.tar"
uname -r > "$out/kernel"
nft --version > "$out/nft-version" 2>&1
# A root of another Debian suite (lab/roots.sh) carries offloadd's PyPI
# dependencies in /opt/offloadd-lab/site and runs its own python3 on the
# mounted repo; the host's root has the project venv.
if [ -d /opt/offloadd-lab/site ]; then
    py=/usr/bin/python3
    export PYTHONPATH="/opt/offloadd-lab/site:$PWD"
else
    # Not the venv's own python (lab/lab-python.sh says why).
    py=/tmp/offloadd-python/bin/python3
    PYTHONPATH=$("$(dirname "$0")/lab-python.sh" /tmp/offloadd-python "$PWD")
    export PYTHONPATH
fi
echo "Debian $(cat /etc/debian_version), $("$py" --version 2>&1), $(nft --version)" > "$out/userspace"
# Boot time as the guest saw it, for the issue notes.
cut -d' ' -f1 /proc/uptime > "$out/guest_uptime_at_start"
# Test paths given on the command line replace the whole suite. What each
# test prints (its measured margins: gaps, packet counts, times) goes into
# the JUnit file, to compare runs when one fails.
suite=tests/integration
for a in "$@"; do case "$a" in tests/*) suite= ;; esac; done
"$py" -m pytest $suite -p no:cacheprovider \
    -o junit_suite_name="integration-$(uname -r)" -o junit_logging=system-out \
    --junitxml="$out/junit.xml" -rfEs "$@"
rc=$?
echo "$rc" > "$out/guest_rc"
exit "$rc"
