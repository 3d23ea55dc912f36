"""The Debian packaging (debian/, built by `make deb`) stays in step with the project:
one version, the dependencies pyproject asks for, the files it installs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

import offloadd

REPO = Path(__file__).resolve().parents[2]
DEBIAN = REPO / "debian"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# pyproject dependencies Debian 12 ships new enough: its package, not a vendored wheel.
FROM_DEBIAN = {"systemd-python": "python3-systemd"}


def _changelog_version() -> str:
    first = (DEBIAN / "changelog").read_text().splitlines()[0]
    m = re.match(r"offloadd \(([^)]+)\) \S+; urgency=\w+$", first)
    assert m, first
    return m.group(1)


def _vendored() -> dict[str, str]:
    """Project name -> pinned version, from debian/vendor.txt."""
    pins = {}
    for line in (DEBIAN / "vendor.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            m = re.match(r"([A-Za-z0-9_.-]+)==(\S+) --hash=sha256:[0-9a-f]{64}$", line)
            assert m, f"not a hash-pinned requirement: {line}"
            pins[m.group(1).lower()] = m.group(2)
    return pins


def _depends() -> dict[str, str]:
    """Package -> version constraint ('' if none) of the binary package's Depends."""
    control = (DEBIAN / "control").read_text()
    m = re.search(r"^Depends: (.*?)\n(?=\S)", control, re.M | re.S)
    assert m, control
    deps = {}
    for item in m.group(1).replace("\n", " ").split(","):
        name, _, constraint = item.strip().partition(" ")
        deps[name] = constraint.strip("() ")
    return deps


def test_one_version_pyproject_changelog_and_module() -> None:
    version = PYPROJECT["project"]["version"]
    assert _changelog_version() == version, "add a debian/changelog entry for the new version"
    assert offloadd.__version__ == version


def test_every_python_dependency_is_vendored_or_a_debian_package() -> None:
    vendored = _vendored()
    depends = _depends()
    for spec in PYPROJECT["project"]["dependencies"]:
        req = Requirement(spec)
        name = req.name.lower()
        if name in FROM_DEBIAN:
            assert FROM_DEBIAN[name] in depends, f"{name}: Depends lacks {FROM_DEBIAN[name]}"
            assert name not in vendored
        else:
            assert name in vendored, f"{name} is neither vendored nor from Debian"
            assert req.specifier.contains(vendored[name]), (name, vendored[name], spec)
            # Vendored because Debian's is too old: depending on it too would
            # be wrong (and it would not be used: the vendored copy comes first).
            assert f"python3-{name.replace('_', '-')}" not in depends
    assert set(vendored) <= {Requirement(s).name.lower() for s in
                             PYPROJECT["project"]["dependencies"]}, "a wheel no one needs"


def test_runtime_dependencies() -> None:
    depends = _depends()
    for pkg in ("python3", "python3-nftables", "python3-systemd", "nftables", "conntrack",
                "procps"):
        assert pkg in depends, pkg
    minimum = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    assert depends["python3"] == f">= {minimum}"


def test_entry_points_match_pyproject() -> None:
    for name, target in PYPROJECT["project"]["scripts"].items():
        module, func = target.split(":")
        script = (DEBIAN / "bin" / name).read_text()
        assert script.startswith("#!/usr/bin/python3\n")
        assert f"from {module} import {func}" in script
        # The private directory first: a system-wide python3-pyroute2 (0.7) loses.
        assert 'sys.path[0:0] = ["/usr/lib/offloadd", "/usr/lib/offloadd/vendor"]' in script
        assert f"debian/bin/{name} usr/sbin" in (DEBIAN / "offloadd.install").read_text()


def test_installed_files_exist() -> None:
    for listing in ("offloadd.install", "offloadd.manpages", "offloadd.docs",
                    "offloadd.examples"):
        for line in (DEBIAN / listing).read_text().splitlines():
            assert (REPO / line.split()[0]).is_file(), f"{listing}: {line}"
    # Every generated man page is shipped.
    shipped = (DEBIAN / "offloadd.manpages").read_text().split()
    assert sorted(shipped) == sorted(f"man/{p.name}" for p in (REPO / "man").iterdir())


def test_service_installed_disabled_and_kept_running_on_upgrade() -> None:
    rules = (DEBIAN / "rules").read_text()
    assert "\tdh_installsystemd --no-enable --no-start --restart-after-upgrade\n" in rules
    # --no-start drops debhelper's stop on removal: the prerm does it.
    prerm = (DEBIAN / "offloadd.prerm").read_text()
    assert "deb-systemd-invoke stop offloadd.service" in prerm
    assert 'nft delete table inet "$table"' in prerm
    assert "rm -rf /etc/offloadd" in (DEBIAN / "offloadd.postrm").read_text()


def test_lintian_overrides_are_explained() -> None:
    lines = (DEBIAN / "offloadd.lintian-overrides").read_text().splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith("#"):
            assert i > 0 and lines[i - 1].startswith("#"), f"override without a comment: {line}"
