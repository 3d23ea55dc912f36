#!/bin/bash
# Builds the Debian package (`make deb`): build/offloadd_<version>_all.deb.
#
#   lab/build-deb.sh [--suffix SUFFIX] [--out DIR] [--lintian]
#
# The version is pyproject.toml's; debian/changelog's newest entry must say
# the same (a unit test checks it too). --suffix builds the same tree under
# another version, e.g. ~test1 (sorts before the release): the changelog's
# entry and offloadd.__version__ are rewritten in the build copy only; the
# full-system test upgrades from such a build. The build runs in a copy
# under build/deb/ (dpkg-buildpackage writes next to the tree it builds)
# with the wheels of debian/vendor.txt, fetched from PyPI once into
# build/deb/wheels and checked against their hashes. --lintian then runs
# lintian on the .deb and fails on any error or warning.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
log() { echo "[deb] $*" >&2; }
die() { echo "[deb] error: $*" >&2; exit 1; }

suffix=""
out="$repo/build"
run_lintian=0
while [ $# -gt 0 ]; do
    case "$1" in
        --suffix) suffix=${2:?--suffix needs a value}; shift 2 ;;
        --out) out=${2:?--out needs a directory}; shift 2 ;;
        --lintian) run_lintian=1; shift ;;
        *) die "unknown argument $1 (known: --suffix S, --out DIR, --lintian)" ;;
    esac
done
case "$suffix" in
    ""|[~+]*) ;;
    *) die "--suffix must start with ~ (an earlier version) or + (a later one): $suffix" ;;
esac

cd "$repo"
for tool in dpkg-buildpackage dpkg-parsechangelog dpkg-checkbuilddeps; do
    command -v "$tool" >/dev/null || die "$tool is missing: apt-get install dpkg-dev"
done
# Build-Depends present? (dpkg-buildpackage would say so too, less helpfully.)
if ! missing=$(dpkg-checkbuilddeps 2>&1); then
    die "$missing
  install them: apt-get install debhelper dh-python python3-pip python3-setuptools python3-wheel"
fi

# Debian's Python and tools, whatever else is first on PATH (pyenv, a venv).
py=/usr/bin/python3
version=$("$py" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
logged=$(dpkg-parsechangelog -l debian/changelog -S Version)
[ "$logged" = "$version" ] || die "debian/changelog's newest entry is $logged, pyproject.toml says $version:
  add an entry for $version to debian/changelog"
deb_version="$version$suffix"

work="$repo/build/deb"
mkdir -p "$work" "$out"
# One build at a time (make test runs two lab VMs at once, and each system
# image builds two packages), and a tree that was built once is not built
# again: the host checks and both system images take the same bytes.
exec 8>"$work/.lock"
flock 8
deb="offloadd_${deb_version}_all.deb"
key=$( { find offloadd pyproject.toml README.md debian systemd etc man contrib -type f \
             -not -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum
         sha256sum "$0"; echo "$deb_version"; } | sha256sum | cut -d' ' -f1)
cache="$work/cache/$key"
if [ -f "$cache/$deb" ]; then
    [ "$(realpath "$out")" = "$(realpath "$cache")" ] || cp "$cache/$deb" "$out/$deb"
    log "$deb: built before from this tree ($cache)"
else

# The vendored wheels (hash-checked; from the cache when it has them).
wheels="$repo/build/deb/wheels"
"$here/vendor-wheels.sh" "$wheels"

src="$work/offloadd-$deb_version"
rm -rf "$src"
mkdir -p "$src"
cp -a offloadd pyproject.toml README.md debian systemd etc man contrib "$src/"
find "$src" -name __pycache__ -prune -exec rm -rf {} +
rm -rf "$src/debian/wheels" "$src/debian/offloadd" "$src/debian/.debhelper"
mkdir -p "$src/debian/wheels"
cp "$wheels"/*.whl "$src/debian/wheels/"
if [ -n "$suffix" ]; then
    sed -i "1s/^offloadd ($version)/offloadd ($deb_version)/" "$src/debian/changelog"
    sed -i "s/^__version__ = \"$version\"$/__version__ = \"$deb_version\"/" "$src/offloadd/__init__.py"
    grep -q "^__version__ = \"$deb_version\"$" "$src/offloadd/__init__.py" \
        || die "offloadd/__init__.py's __version__ is not $version"
fi

log "dpkg-buildpackage -us -uc -b ($deb_version; log: $work/build-$deb_version.log)"
rm -f "$work"/offloadd_"$deb_version"_*
# A clean environment, as a Debian build machine has: the caller's PATH,
# PYTHON* and PIP_* settings must not reach debian/rules.
if ! (cd "$src" && env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="${HOME:-/root}" LANG=C.UTF-8 \
        ${DEB_BUILD_OPTIONS:+DEB_BUILD_OPTIONS="$DEB_BUILD_OPTIONS"} \
        dpkg-buildpackage -us -uc -b) > "$work/build-$deb_version.log" 2>&1; then
    tail -40 "$work/build-$deb_version.log" >&2
    die "dpkg-buildpackage failed (log: $work/build-$deb_version.log)"
fi
find "$work/cache" -mindepth 1 -maxdepth 1 -mtime +1 -exec rm -rf {} + 2>/dev/null || true
mkdir -p "$cache"
mv "$work/$deb" "$cache/$deb"
cp "$cache/$deb" "$out/$deb"
rm -rf "$src"
log "built $out/$deb"
fi

if [ "$run_lintian" = 1 ]; then
    command -v lintian >/dev/null || die "lintian is missing: apt-get install lintian"
    log "lintian $deb"
    lintian --fail-on error,warning "$out/$deb"
fi
