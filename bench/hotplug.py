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
# A burst that has not converged by then will not: the daemon retries the same
# refused transaction (e.g. EFBIG: nf_tables takes at most 256 devices per
# flowtable hook message).
BURST_TIMEOUT = 240


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
        # How long the kernel took to create them: a burst that lasts longer
        # than the watcher's max_delay reaches the daemon as several snapshots.
        create_s = round(time.monotonic() - t0, 2)
        want = {"lan0", "lan1", "wan0"} | {f"lanb{i}" for i in range(BURST)}
        error = None
        try:
            d.wait_devices("ft", want, timeout=BURST_TIMEOUT)
            burst_s: float | None = round(time.monotonic() - t0, 2)
        except AssertionError:
            burst_s = None
            errors = [ln for ln in d.log_text().splitlines() if "ERROR" in ln]
            error = (f"{BURST} links not attached within {BURST_TIMEOUT}s; "
                     f"last daemon error: {errors[-1] if errors else 'none'}")
        attached = len(d.flowtable_devices("ft") or ())
        tx = _transactions(d) - tx0
    res: dict[str, Any] = {
        "case": "hotplug",
        "samples": {"attach_ms": attach},
        "attach_ms_p50": round(statistics.median(attach), 1),
        "attach_ms_max": round(max(attach), 1),
        "burst500_s": burst_s,
        "burst500_tx": tx,
        "burst500_attached": attached,
        "burst500_create_s": create_s,
    }
    if error:
        res["error"] = error
    return res
