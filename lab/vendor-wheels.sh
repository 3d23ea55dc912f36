#!/bin/bash
# The wheels of debian/vendor.txt (offloadd's PyPI dependencies as the Debian
# package vendors them), hash-checked, into DIR: from DIR itself when it has
# them all (offline rebuilds), else from PyPI. Shared by the package build
# (lab/build-deb.sh) and the lab's Debian roots (lab/roots.sh), so both carry
# the same bytes.
#
#   lab/vendor-wheels.sh DIR
set -euo pipefail
dir=${1:?usage: lab/vendor-wheels.sh DIR}
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$dir"
# One fetch at a time into DIR: make test runs two lab VMs at once, and each
# may build a root or a package that needs these wheels.
exec 8>"$dir/.lock"
flock 8
dl() {
    # Debian's pip, whatever is first on PATH; the host's pip config (local
    # indexes) does not apply to pinned, hashed downloads.
    PIP_CONFIG_FILE=/dev/null /usr/bin/python3 -m pip download -q --disable-pip-version-check \
        --no-deps --only-binary=:all: --require-hashes -r "$repo/debian/vendor.txt" -d "$dir" "$@"
}
if ! dl --no-index --find-links "$dir" >/dev/null 2>&1; then
    echo "[lab] fetching the wheels of debian/vendor.txt from PyPI into $dir" >&2
    dl >&2 || { echo "[lab] error: could not fetch the wheels of debian/vendor.txt" >&2; exit 1; }
fi
