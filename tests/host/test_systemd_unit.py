"""The shipped unit must stay valid, hardened and in step with the daemon.

systemd-analyze judges the unit file offline (PID 1 need not be systemd).
`verify` exits 0 even for unknown keys and unparsable values (it only warns,
as PID 1 would, and then ignores the line), so any output counts as failure
here. Needs the `systemd` Debian package for systemd-analyze.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from offloadd.kernel.capability import MODULES

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "offloadd.service"
MODULES_CONF = ROOT / "systemd" / "offloadd-modules.conf"
SYSCTL_CONF = ROOT / "systemd" / "offloadd-sysctl.conf"
MAX_EXPOSURE = 2.0
EXEC_START = "/usr/sbin/offloadd --config /etc/offloadd/offloadd.toml"


def _analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.fail("systemd-analyze not found: apt-get install systemd")
    return exe


def _directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) in file order; keys may repeat, as in systemd."""
    out = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def _values(key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in _directives(UNIT.read_text()) if s == section and k == key]


def _one(key: str) -> str:
    vals = _values(key)
    assert len(vals) == 1, f"{key}= set {len(vals)} times: {vals}"
    return vals[0]


def _verify(unit: Path) -> str:
    proc = subprocess.run([_analyze(), "verify", "--man=no", "--generators=no", str(unit)],
                          capture_output=True, text=True, check=False)
    return (proc.stdout + proc.stderr).strip() + ("" if proc.returncode == 0
                                                  else f"\n(exit {proc.returncode})")


def _verifiable_copy(tmp_path: Path, text: str) -> Path:
    """The unit with ExecStart= pointing at a stub: verify checks that the
    binary exists, and this machine has offloadd in a venv, not /usr/sbin."""
    stub = tmp_path / "offloadd"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    copy = tmp_path / "offloadd.service"
    copy.write_text(text.replace("\nExecStart=/usr/sbin/offloadd ", f"\nExecStart={stub} "))
    return copy


def test_security_exposure() -> None:
    proc = subprocess.run([_analyze(), "security", "--offline=yes", "--no-pager", str(UNIT)],
                          capture_output=True, text=True, check=False)
    m = re.search(r"Overall exposure level for offloadd\.service: (\d+(?:\.\d+)?)",
                  proc.stdout)
    assert m, f"no exposure level in output (exit {proc.returncode}):\n{proc.stdout}"
    level = float(m.group(1))
    print(f"offloadd.service exposure: {level}")
    assert level <= MAX_EXPOSURE, proc.stdout


def test_verify_is_clean(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert f"ExecStart={EXEC_START}" in text
    assert _verify(_verifiable_copy(tmp_path, text)) == ""


@pytest.mark.parametrize(("find", "replace"), [
    ("\nProtectHome=yes\n", "\nProtectHom=yes\n"),
    ("\nType=notify\n", "\nType=notifi\n"),
    ("\nRestrictNamespaces=yes\n", "\nRestrictNamespaces=maybe\n"),
])
def test_verify_catches_mistakes(tmp_path: Path, find: str, replace: str) -> None:
    """The check above must be able to fail: verify only warns on these."""
    text = UNIT.read_text()
    assert text.count(find) == 1
    assert _verify(_verifiable_copy(tmp_path, text.replace(find, replace, 1))) != ""


def test_unit_contract() -> None:
    assert _one("Type") == "notify"
    assert _one("NotifyAccess") == "main"
    reload_cmd = _one("ExecReload").split()
    assert reload_cmd[0].startswith("/") and reload_cmd[0].endswith("/kill")
    assert reload_cmd[1:] == ["-HUP", "$MAINPID"]
    assert _one("ExecStart") == EXEC_START
    assert _one("Restart") == "on-failure"
    assert _one("RuntimeDirectory") == "offloadd"
    assert _one("RuntimeDirectoryMode") == "0750"
    assert int(_one("WatchdogSec")) > 0
    assert _one("CapabilityBoundingSet") == "CAP_NET_ADMIN"
    assert _values("AmbientCapabilities") in ([], ["CAP_NET_ADMIN"])
    assert _one("NoNewPrivileges") == "yes"
    assert _one("ProtectKernelTunables") == "yes"
    assert _one("ProtectKernelModules") == "yes"
    # ProcSubset=pid would hide /proc/sys/net/netfilter/nf_conntrack_acct,
    # which the daemon reads before using elephant_packets.
    assert _values("ProcSubset") == []
    assert "AF_NETLINK" in _one("RestrictAddressFamilies").split()


def test_boot_files_match_the_daemon() -> None:
    listed = [ln.strip() for ln in MODULES_CONF.read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]
    assert set(MODULES) <= set(listed), listed
    settings = dict(
        (k.strip(), v.strip()) for k, _, v in
        (ln.partition("=") for ln in SYSCTL_CONF.read_text().splitlines()
         if ln.strip() and not ln.startswith("#")))
    assert settings == {"net.netfilter.nf_conntrack_acct": "1"}
