"""The capability probe says "can" on a kernel whose config has flowtables."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.lab.nftns import kernel_config_has_flowtables


def test_probe_agrees_with_kernel_config_in_vm() -> None:
    config = Path(os.environ["OFFLOADD_KERNEL_CONFIG"]).read_text()
    assert kernel_config_has_flowtables(config)
    proc = subprocess.run([sys.executable, "-m", "offloadd.kernel.capability"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("yes: ")
    assert Path("/sys/module/nf_flow_table_inet").exists()
