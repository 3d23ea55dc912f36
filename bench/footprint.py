"""Footprint case: the daemon's memory and CPU when nothing happens.

Three flowtables and 50 matching devices (the lab's 3 plus 47 more veth legs
in the router); once everything is attached and a few seconds have passed,
VmRSS is read, then the process's utime+stime over 60 idle seconds.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.common import cpu_s, rss_mb
from tests.lab.daemon import offloadd
from tests.lab.topology import lab_topology

CONFIG = """
[[flowtable]]
name = "lan"
devices = ["lan*"]

[[flowtable]]
name = "wan"
devices = ["wan*"]

[[flowtable]]
name = "dmz"
devices = ["dmz*"]
"""
IDLE_S = 60
SETTLE_S = 5


def _extra_devices() -> dict[str, list[str]]:
    return {"lan": [f"lanf{i}" for i in range(16)],
            "wan": [f"wanf{i}" for i in range(16)],
            "dmz": [f"dmzf{i}" for i in range(15)]}


def run(workdir: Path, idle_s: float = IDLE_S) -> dict[str, Any]:
    extra = _extra_devices()
    want = {"lan": {"lan0", "lan1", *extra["lan"]}, "wan": {"wan0", *extra["wan"]},
            "dmz": set(extra["dmz"])}
    with lab_topology() as lab:
        r = lab.router
        names = [n for group in extra.values() for n in group]
        r.run("ip", "-batch", "-", input="".join(
            f"link add {n} type veth peer name xq{i}\n" for i, n in enumerate(names)))
        with offloadd(r, CONFIG, workdir) as d:
            for ft, devs in want.items():
                d.wait_devices(ft, devs, timeout=120)
            time.sleep(SETTLE_S)
            pid = d.proc.pid
            rss = rss_mb(pid)
            c0, t0 = cpu_s(pid), time.monotonic()
            time.sleep(idle_s)
            c1, t1 = cpu_s(pid), time.monotonic()
            rss_end = rss_mb(pid)
    return {
        "case": "footprint",
        "samples": {"rss_mb": [rss, rss_end], "cpu_s": [c0, c1], "window_s": round(t1 - t0, 1)},
        "flowtables": len(want),
        "devices": sum(len(v) for v in want.values()),
        "rss_idle_mb": rss,
        "rss_idle_end_mb": rss_end,
        "idle_cpu_s": round(c1 - c0, 2),
        "idle_window_s": round(t1 - t0, 1),
    }
