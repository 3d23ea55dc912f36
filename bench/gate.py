"""Gate case: attach latency and scrape time with an empty gate vs 2x200k ids.

The gate's sets (offloadd.core.gate) hold one conntrack id per recently active
flow. Reads of offloadd's table must not grow with them (issue 23: with 100k
ids per set a scrape took 12 s and an attach 31 s under TCG, nft 1.0.6, when
every read listed the elements). In one run, in the lab router:
1. offloadd starts (``on_exit = "keep"``) with an empty gate: time to ready,
   ``SAMPLES`` attaches (bench.attach_probe) and ``SCRAPES`` /metrics scrapes
   (bench.scrape_probe);
2. it stops, the table stays, and both sets get ``IDS`` ids each (an hour's
   timeout each, so none expires during the case): what a restart on a busy
   gateway finds;
3. offloadd starts again on that table: the same measurements;
4. one foreign change (``add table``): the re-validations it caused (must be
   1: the gate sets are replaced, not flushed) and the replacement's duration.
Ratios full/empty are the figures; absolute times under TCG mean little.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from offloadd.core.gate import element
from tests.lab.daemon import RunningDaemon, offloadd
from tests.lab.netns import Netns
from tests.lab.topology import lab_topology
from tests.lab.traffic import wait_for

CONFIG = """
[daemon]
on_exit = "keep"

[[flowtable]]
name = "ft"
devices = ["lan*", "wan*"]
"""
IDS = 200_000
SAMPLES = 20
# Scrapes are short (~0.3 s under TCG) and noisy: many, so the median holds.
SCRAPES = 15
SETS = ("passed_original", "passed_reply")
MARKER = "zzmarker0"


def _fill(r: Netns, path: Path, ids: int) -> float:
    with path.open("w") as f:
        for name in SETS:
            for start in range(1, ids + 1, 1000):
                chunk = ", ".join(f"{element(i, 1024 + i % 64000, 443)} timeout 1h"
                                  for i in range(start, min(start + 1000, ids + 1)))
                f.write(f"add element inet offloadd {name} {{ {chunk} }}\n")
    t0 = time.monotonic()
    r.run("nft", "-f", str(path), timeout=1200)
    return time.monotonic() - t0


def _gate_size(r: Netns) -> int:
    total = 0
    for name in SETS:
        out = r.out("nft", "-j", "list", "set", "inet", "offloadd", name, timeout=600)
        total += sum(len(i["set"].get("elem", [])) for i in json.loads(out)["nftables"]
                     if "set" in i)
    return total


def _ifs(r: Netns) -> list[str]:
    out = r.out("nft", "-j", "list", "set", "inet", "offloadd", "ft_ifs")
    elems = [i["set"].get("elem", []) for i in json.loads(out)["nftables"] if "set" in i]
    return [e for el in elems for e in ([el] if isinstance(el, str) else el)]


def _revalidate(d: RunningDaemon) -> dict[str, Any]:
    rv: dict[str, Any] = json.loads(d.ctl("--json", "status", check=True).stdout)["revalidate"]
    return rv


def _measure(r: Netns) -> dict[str, Any]:
    attach = json.loads(r.run(sys.executable, "-m", "bench.attach_probe", "--samples",
                              str(SAMPLES), timeout=1800).stdout)["attach_ms"]
    rows = json.loads(r.run(sys.executable, "-m", "bench.scrape_probe", "--rounds",
                            str(SCRAPES), timeout=1800).stdout)["rounds"]
    scrapes = [x["scrape_s"] for x in rows]
    return {"attach_ms": [round(a, 1) for a in attach], "scrape_s": scrapes,
            "attach_ms_p50": round(statistics.median(attach), 1),
            "attach_ms_max": round(max(attach), 1),
            "scrape_s_p50": round(statistics.median(scrapes), 3),
            "scrape_s_min": round(min(scrapes), 3)}


def _phase(r: Netns, workdir: Path) -> tuple[float, dict[str, Any]]:
    t0 = time.monotonic()
    with offloadd(r, CONFIG, workdir) as d:
        ready_s = time.monotonic() - t0
        d.wait_devices("ft", {"lan0", "lan1", "wan0"})  # a full listing: the gate is empty
        return ready_s, _measure(r)


def run(workdir: Path, ids: int = IDS) -> dict[str, Any]:
    with lab_topology() as lab:
        r = lab.router
        empty_ready_s, empty = _phase(r, workdir)
        fill_s = _fill(r, workdir / "gate.nft", ids)
        gate_ids = _gate_size(r)
        print(f"  gate: {gate_ids} ids in the gate sets (nft -f {fill_s:.1f} s)", flush=True)
        t0 = time.monotonic()
        with offloadd(r, CONFIG, workdir) as d:
            full_ready_s = time.monotonic() - t0
            full = _measure(r)
            gate_ids_after = _gate_size(r)
            rv0 = _revalidate(d)
            r.nft("add table inet foreign\n")
            changed = time.monotonic()
            wait_for(lambda: _revalidate(d)["revalidations_total"] > rv0["revalidations_total"],
                     300, interval=1.0, what="a re-validation after one foreign change")
            took = time.monotonic() - changed
            # A marker after it in the change stream (someone else's element
            # in offloadd's ifname set, which a reconcile removes): once it is
            # gone, an overrun of the daemon's event socket by its own
            # re-validation would have been counted.
            r.nft(f'add element inet offloadd ft_ifs {{ "{MARKER}" }}\n')
            wait_for(lambda: MARKER not in _ifs(r), 300, interval=1.0,
                     what=f"the marker {MARKER} removed by a reconcile")
            rv1 = _revalidate(d)
            gate_ids_replaced = _gate_size(r)
    res: dict[str, Any] = {
        "case": "gate",
        "samples": {"empty": empty, "full": full},
        "gate_ids": gate_ids,
        "gate_ids_after_measuring": gate_ids_after,
        "gate_fill_s": round(fill_s, 1),
        "attach_ms_p50_empty": empty["attach_ms_p50"],
        "attach_ms_p50_full": full["attach_ms_p50"],
        "attach_ms_max_empty": empty["attach_ms_max"],
        "attach_ms_max_full": full["attach_ms_max"],
        "attach_p50_ratio": round(full["attach_ms_p50"] / empty["attach_ms_p50"], 2),
        "scrape_s_empty": empty["scrape_s_p50"],
        "scrape_s_full": full["scrape_s_p50"],
        "scrape_ratio": round(full["scrape_s_p50"] / empty["scrape_s_p50"], 2),
        # The fastest of each: what is left when the host's other load is least.
        "scrape_min_ratio": round(full["scrape_s_min"] / empty["scrape_s_min"], 2),
        "start_s_empty": round(empty_ready_s, 2),
        "start_s_full": round(full_ready_s, 2),
        "revalidations_per_change": rv1["revalidations_total"] - rv0["revalidations_total"],
        "policy_changes_seen": rv1["policy_changes_total"] - rv0["policy_changes_total"],
        "revalidation_trigger": rv1["last"]["trigger"] if rv1.get("last") else None,
        "revalidation_replace_s": rv1["last"]["duration_seconds"] if rv1.get("last") else None,
        "revalidation_seen_s": round(took, 2),
        "gate_ids_after_revalidation": gate_ids_replaced,
    }
    if gate_ids != 2 * ids or gate_ids_after != 2 * ids:
        res["error"] = (f"gate not full while measured: {gate_ids} ids after the fill, "
                        f"{gate_ids_after} after the measurements, {2 * ids} expected")
    return res
