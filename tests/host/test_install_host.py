"""`make install` puts a working offloadd, the unit, config and boot files in place."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_make_install_into_destdir(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    proc = subprocess.run(["make", "-C", str(REPO), "install", f"DESTDIR={dest}"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    unit = (dest / "etc/systemd/system/offloadd.service").read_text()
    assert "\nExecStart=/opt/offloadd/bin/offloadd --config /etc/offloadd/offloadd.toml\n" in unit
    for f in ("etc/offloadd/offloadd.toml", "etc/modules-load.d/offloadd.conf",
              "etc/sysctl.d/60-offloadd.conf"):
        assert (dest / f).is_file(), f
    assert (dest / "usr/local/sbin/offloadctl").is_symlink()
    bindir = dest / "opt/offloadd/bin"
    version = subprocess.run([str(bindir / "offloadd"), "--version"], capture_output=True,
                             text=True, check=True).stdout
    assert version.strip() == "offloadd 0.1.0"
    check = subprocess.run([str(bindir / "offloadctl"), "--help"], capture_output=True,
                           text=True, check=True).stdout
    assert "explain" in check and "Exit status" in check
    # A second install keeps an operator's edited config.
    (dest / "etc/offloadd/offloadd.toml").write_text("# mine\n")
    subprocess.run(["make", "-C", str(REPO), "install", f"DESTDIR={dest}"],
                   capture_output=True, text=True, timeout=600, check=True)
    assert (dest / "etc/offloadd/offloadd.toml").read_text() == "# mine\n"
