"""Survival case: N offloaded UDP flows while unrelated matching devices churn.

N long-lived flows (client -> UDP echo server, one datagram per flow per
second) run offloaded through lan0/wan0 while, 50 times, a matching device is
added and removed. bench/survival_probe.py does the churn inside the router
and watches two things:

* conntrack: the flows still offloaded at the end of each cycle whose conntrack
  entry was never destroyed (``conntrack -E`` DESTROY events are the oracle):
  ``survival_ratio`` (mean over cycles), ``survival_ratio_min`` (worst); the
  flows offloaded at all at the end of the worst cycle (``offloaded_ratio_min``);
  entries destroyed during the churn (``entries_destroyed``); and, as a second
  view, the flows whose ctnetlink id did not change across one join
  (``join_id_kept_ratio``) or one removal (``leave_id_kept_ratio``);
* a slow-path witness (a forward chain at priority -300 filling a dynamic set):
  the flows that never took the slow path across all 50 joins
  (``join_survival_ratio``) and across all 50 removals (``leave_survival_ratio``).

A device leaving makes the kernel flush its route cache (rt_cache_flush on
NETDEV_UNREGISTER): each offloaded flow's next packet meets a stale route,
goes through the slow path once and is offloaded again under the same entry,
whoever manages the flowtable; so ``leave_survival_ratio`` is expected near 0.
The contrast: the same churn where the
whole table is rebuilt in one transaction after each change (``*_rebuild``), as
rebuild-on-event tools do: every flow goes back through the slow path.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from bench.common import echo_server, held_flows
from tests.lab import conntrack
from tests.lab.daemon import offloadd
from tests.lab.topology import Lab, lab_topology
from tests.lab.traffic import wait_for

# revalidate off: the witness's set flush after each phase is a ruleset
# change by another process, which would (rightly) send every flow through
# the slow path once; re-validation has its own case (bench/policy.py).
CONFIG = """
[daemon]
on_exit = "keep"
revalidate = "off"

[[flowtable]]
name = "ft"
devices = ["lan*", "wan*"]
"""
FLOWS = 1000
CYCLES = 50
REBUILD_CYCLES = 10
INTERVAL = 1.0
PORT = 7000


def _probe(lab: Lab, workdir: Path, cycles: int, prefix: str,
           rebuild: bool) -> dict[str, Any]:
    args = [sys.executable, "-m", "bench.survival_probe", "--ports",
            str(workdir / "ports.json"), "--port", str(PORT), "--cycles", str(cycles),
            "--prefix", prefix, "--progress", str(workdir / "progress")]
    if rebuild:
        args.append("--rebuild")
    proc = lab.router.run(*args, timeout=1200)
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def _figures(p: dict[str, Any], suffix: str) -> dict[str, Any]:
    """Ratios over the flows each count is a subset of, so each lies in 0..1.

    Flows alive with their entry are a subset of those offloaded at the
    start; flows offloaded now, slow-pathed or with a kept id are subsets of
    all the case's flows (a phase may start with fewer offloaded than exist:
    on 7.3 without repair the rebuild phase started with 133 of 1000).
    """
    n = max(1, p["offloaded_at_start"])
    total = max(1, p["flows"])
    cycles = p["cycles"]
    per_cycle = [c["offloaded_same_entry"] / n for c in cycles]
    waits = [c["reoffload_s"] for c in cycles]
    return {
        f"survival_ratio{suffix}": round(statistics.mean(per_cycle), 4),
        f"survival_ratio_min{suffix}": round(min(per_cycle), 4),
        f"offloaded_ratio_min{suffix}": round(min(c["offloaded_now"] for c in cycles) / total,
                                              4),
        f"entries_destroyed{suffix}": max(c["destroyed_so_far"] for c in cycles),
        f"join_id_kept_ratio{suffix}": round(statistics.mean(
            c["id_kept_join"] / total for c in cycles), 4),
        f"leave_id_kept_ratio{suffix}": round(statistics.mean(
            c["id_kept_leave"] / total for c in cycles), 4),
        f"join_survival_ratio{suffix}": round(1 - p["join_slow_flows"] / total, 4),
        f"leave_survival_ratio{suffix}": round(1 - p["leave_slow_flows"] / total, 4),
        f"attach_s_median{suffix}": round(statistics.median(c["attach_s"] for c in cycles), 3),
        # Seconds from a removal until every flow is offloaded again; cycles
        # where that did not happen within 5 s are counted apart.
        f"reoffload_s_max{suffix}": max((w for w in waits if w is not None), default=None),
        f"reoffload_missed_cycles{suffix}": sum(1 for w in waits if w is None),
    }


def run(workdir: Path, flows: int = FLOWS, cycles: int = CYCLES,
        rebuild_cycles: int = REBUILD_CYCLES) -> dict[str, Any]:
    with lab_topology() as lab:
        r = lab.router
        # The kernel's default flowtable UDP timeout on purpose: with it raised
        # above nf_conntrack_udp_timeout_stream, every teardown (a route cache
        # flush, a rebuild) expires the entry at once and the next packet
        # creates a new one (seen: all 1000 entries destroyed at the first
        # device removal with nf_flowtable_udp_timeout = 3600).
        with offloadd(r, CONFIG, workdir) as d, echo_server(lab.server, [PORT]):
            d.wait_devices("ft", {"lan0", "lan1", "wan0"})
            with held_flows(lab.client, lab.wan.host_v4, PORT, flows, interval=INTERVAL,
                            progress=workdir / "progress") as held:
                ports = held.info["ports"]
                (workdir / "ports.json").write_text(json.dumps(ports))
                want = set(ports)
                wait_for(lambda: len(want & set(_ids(lab))) >= flows * 0.99, 60,
                         interval=1, what=f"{flows} offloaded flows")
                daemon = _probe(lab, workdir, cycles, "lanc", rebuild=False)
                rebuild = _probe(lab, workdir, rebuild_cycles, "lanr", rebuild=True)
                sent = held.stop()
    n = daemon["offloaded_at_start"]
    res: dict[str, Any] = {
        "case": "survival",
        "samples": {"offloadd": daemon["cycles"], "rebuild": rebuild["cycles"]},
        "flows": flows,
        "flows_established": held.info["established"],
        "flows_offloaded_at_start": n,
        "cycles": cycles,
        "rebuild_cycles": rebuild_cycles,
        "datagrams_sent": sent.get("sent"),
    }
    res.update(_figures(daemon, ""))
    res.update(_figures(rebuild, "_rebuild"))
    return res


def _ids(lab: Lab) -> dict[int, int]:
    return {e.sport: e.id for e in conntrack.entries(lab.router, 4)
            if e.proto == "udp" and e.dport == PORT and e.offloaded}
