#!/bin/bash
# Makes DIR a bare venv of /usr/bin/python3 (no site packages) and prints the
# PYTHONPATH it runs the suite with: the project venv's packages under REPO,
# Debian's, and REPO. Why: a venv's site reads every .pth of the venv and of
# the system's site dirs at each start (an editable install's finder, a host's
# certifi hook: 0.75 s of a 1.3-s Python start under TCG); on PYTHONPATH no
# .pth runs. Used by guest-run.sh in the Debian 12 guests and, on the host,
# by roots.sh's guest_bytecode, which must see the same sys.path.
# Usage: lab/lab-python.sh DIR REPO
set -eu
dir=$1 repo=$2
mkdir -p "$dir/bin"
ln -sf /usr/bin/python3 "$dir/bin/python3"
printf 'home = /usr/bin\ninclude-system-site-packages = false\n' > "$dir/pyvenv.cfg"
echo "$(echo "$repo"/.venv/lib/python3*/site-packages):/usr/lib/python3/dist-packages:$repo"
