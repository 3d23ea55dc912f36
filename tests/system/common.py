"""What the full-system tests share: the system they drive (systemd, nft, apt)
and the lab config they give offloadd.

The tests run inside the VM that lab/system-test.sh boots, in the order
conftest.py sets: test_package.py installs the Debian package (a previous
build, then an upgrade to this one), test_systemd.py runs the service as the
package installed it, test_purge.py purges it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

UNIT = "offloadd.service"
PACKAGE = "offloadd"
CONFIG = Path("/etc/offloadd/offloadd.toml")
TABLE = "offloadd"
# The packages lab/system-image.sh built from this checkout: this version and
# the same tree as <version>~test1, which sorts before it.
DEBS = Path("/opt/offloadd-systemtest/debs")
# What the package installs, and where (merged /usr: /lib is /usr/lib).
UNIT_FILE = Path("/usr/lib/systemd/system/offloadd.service")
WANTS_LINK = Path("/etc/systemd/system/multi-user.target.wants/offloadd.service")

T = TypeVar("T")

NEEDS_SYSTEMD = pytest.mark.skipif(
    not Path("/run/systemd/system").is_dir() or os.getpid() == 1 or os.geteuid() != 0,
    reason="needs root on a system booted with systemd (lab/system-test.sh)")


def run(*args: str, check: bool = True, timeout: float = 120,
        env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}: "
                             f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def show(*props: str) -> dict[str, str]:
    out = run("systemctl", "show", UNIT, *(f"--property={p}" for p in props))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def flowtables(table: str = TABLE) -> dict[str, set[str]] | None:
    """Flowtable name -> devices in `inet table`; None if there is no such table."""
    proc = subprocess.run(["nft", "-j", "list", "table", "inet", table],
                          capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        return None
    fts: dict[str, set[str]] = {}
    for obj in json.loads(proc.stdout)["nftables"]:
        ft = obj.get("flowtable")
        if ft is not None:
            dev = ft.get("dev", [])
            fts[ft["name"]] = {dev} if isinstance(dev, str) else set(dev)
    return fts


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


class Journal:
    """The journal from now on (offloadd's entries and systemd's about it)."""

    def __init__(self) -> None:
        out = run("journalctl", "--show-cursor", "-n", "0", "--no-pager")
        m = re.search(r"-- cursor: (\S+)", out)
        self._cursor = m.group(1) if m else None

    def text(self) -> str:
        # The whole journal, not -u: a message sent just before the process
        # exits can reach journald after its cgroup is gone (no _SYSTEMD_UNIT),
        # and PID 1's watchdog message did not match UNIT= here. The patterns
        # looked for are specific enough.
        args = ["journalctl", "--no-pager", "-o", "cat"]
        if self._cursor:
            args.append(f"--after-cursor={self._cursor}")
        return run(*args)

    def wait_for(self, pattern: str, timeout: float = 60) -> str:
        return wait_for(f"journal line /{pattern}/ (so far:\n{self.text()})",
                        lambda: re.search(pattern, self.text()) and self.text(), timeout)


def config_text(devices: list[str], *, table: str = TABLE, on_exit: str = "remove",
                bad: bool = False) -> str:
    devs = ", ".join(json.dumps(d) for d in devices)
    text = f"""\
[daemon]
table = "{table}"
family = "inet"
priority = "auto"
on_exit = "{on_exit}"

[metrics]
listen = "127.0.0.1:9468"
enabled = true

[control]
socket = "/run/offloadd/control.sock"
group = ""

[[flowtable]]
name = "lan"
devices = [{devs}]
protocols = ["tcp", "udp"]
counter = true
hardware = "off"
"""
    if bad:
        # Valid TOML, invalid offloadd config: a second flowtable of the same name.
        text += '\n[[flowtable]]\nname = "lan"\ndevices = ["nothere"]\n'
    return text


def write_config(devices: list[str], *, bad: bool = False, **kw: str) -> None:
    tmp = CONFIG.with_suffix(".tmp")
    tmp.write_text(config_text(devices, bad=bad, **kw))
    tmp.replace(CONFIG)


def ip(*args: str) -> None:
    run("ip", *args)


# -- the package ----------------------------------------------------------------

def debs() -> tuple[Path, Path]:
    """(the previous build, this build) that lab/system-image.sh put in the image."""
    found = sorted(DEBS.glob("offloadd_*_all.deb"))
    previous = [d for d in found if "~" in d.name]
    current = [d for d in found if "~" not in d.name]
    assert len(previous) == 1 and len(current) == 1, f"packages in {DEBS}: {found}"
    return previous[0], current[0]


def deb_version(deb: Path) -> str:
    return run("dpkg-deb", "--field", str(deb), "Version").strip()


def installed_version() -> str | None:
    """The version dpkg has installed (configured), None if it is not."""
    proc = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Version}", PACKAGE],
                          capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        return None
    status, _, version = proc.stdout.partition(" ")
    return version.strip() if status.strip() == "ii" else None


def apt(*args: str) -> str:
    """apt as an operator runs it, non-interactively; the VM has no network and
    needs none (the image holds every dependency; lab/system-image.sh checks)."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
           "DEBIAN_FRONTEND": "noninteractive", "HOME": "/root"}
    return run("apt", "-y", *args, timeout=600, env=env)
