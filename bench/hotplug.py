"""Hotplug case: link appears → attached (100 samples); 500 links at once.

Runs the real daemon in the lab router. The burst's transaction count comes
from the daemon itself (offloadctl --json status), so it counts what was
really sent to the kernel.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from tests.lab.daemon import offloadd
from tests.lab.topology import lab_topology

CONFIG = """
[[flowtable]]
name = "ft"
devices = ["lan*", "wan*"]
"""
BURST = 500


def _transactions(d: Any) -> int:
    return int(json.loads(d.ctl("--json", "status", check=True).stdout)
               ["reconcile"]["transactions_total"])


def run(workdir: Path, samples: int = 100) -> dict[str, Any]:
    with lab_topology() as lab, offloadd(lab.router, CONFIG, workdir) as d:
        d.wait_devices("ft", {"lan0", "lan1", "wan0"})
        probe = lab.router.run(sys.executable, "-m", "bench.attach_probe",
                               "--samples", str(samples), timeout=1800)
        attach = json.loads(probe.stdout)["attach_ms"]
        tx0 = _transactions(d)
        batch = "".join(f"link add lanb{i} type veth peer name qb{i}\n" for i in range(BURST))
        t0 = time.monotonic()
        lab.router.run("ip", "-batch", "-", input=batch, timeout=600)
        want = {"lan0", "lan1", "wan0"} | {f"lanb{i}" for i in range(BURST)}
        d.wait_devices("ft", want, timeout=600)
        burst_s = time.monotonic() - t0
        tx = _transactions(d) - tx0
    return {
        "case": "hotplug",
        "samples": {"attach_ms": attach},
        "attach_ms_p50": round(statistics.median(attach), 1),
        "attach_ms_max": round(max(attach), 1),
        "burst500_s": round(burst_s, 2),
        "burst500_tx": tx,
    }
