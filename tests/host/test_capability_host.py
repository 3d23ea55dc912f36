"""On the machine itself (not the VM) the probe must match the kernel's config.

This project's machines run a kernel without CONFIG_NF_FLOW_TABLE, so here the
probe has to say "cannot" and name the missing support; on a machine whose
kernel has flowtables (a Vagrant box) it has to say "can".
"""

from __future__ import annotations

import gzip
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lab.nftns import kernel_config_has_flowtables


def _kernel_config() -> str:
    gz = Path("/proc/config.gz")
    if gz.exists():
        return gzip.decompress(gz.read_bytes()).decode()
    return Path(f"/boot/config-{platform.release()}").read_text()


def test_probe_matches_kernel_config() -> None:
    if os.geteuid() != 0:
        pytest.fail("the host capability test needs root (nft needs CAP_NET_ADMIN)")
    expected = kernel_config_has_flowtables(_kernel_config())
    proc = subprocess.run([sys.executable, "-m", "offloadd.kernel.capability"],
                          capture_output=True, text=True, check=False)
    line = proc.stdout.strip()
    assert len(line.splitlines()) == 1, line
    if expected:
        assert proc.returncode == 0 and line.startswith("yes: "), line
    else:
        assert proc.returncode == 1, line
        assert line.startswith("no: ") and "cannot create flowtables" in line, line
        assert "CONFIG_NF_FLOW_TABLE" in line, line


def test_daemon_refuses_to_start_with_one_line_on_a_kernel_without_flowtables(
        tmp_path: Path) -> None:
    if kernel_config_has_flowtables(_kernel_config()):
        pytest.fail("this check is for kernels without flowtables; use make test-native here")
    cfg = tmp_path / "offloadd.toml"
    cfg.write_text('[[flowtable]]\nname = "ft"\ndevices = ["eth*"]\n')
    proc = subprocess.run([sys.executable, "-m", "offloadd.cli.run", "--config", str(cfg)],
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "cannot create flowtables" in lines[0] and "CONFIG_NF_FLOW_TABLE" in lines[0]
