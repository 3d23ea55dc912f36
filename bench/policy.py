"""Policy case: how fast an admin's new drop rule reaches offloaded flows.

In the lab router, 100 unaffected UDP flows (50 IPv4 through a masquerade,
50 IPv6) and 20 victim flows run offloaded through offloadd, one datagram
per flow every 0.1 s. 20 trials, one per victim: the admin adds
``udp sport <victim's port> drop`` to a chain of their own table. Figures:

* ``stop_ms_p50`` / ``stop_ms_max``: from the admin's change (``nft`` has
  returned) to the victim's last echo (flowgen probe timestamps; one
  datagram interval, 100 ms, is the resolution);
* ``unaffected_reoffloaded_1s_ratio``: over all trials, the unaffected flows
  offloaded again 1 s after the change under the same conntrack entry and
  NAT mapping (conntrack-tools);
* ``revalidation_delay_ms_p50``: the daemon's own figure, change to
  replacement done;
* ``victims_stopped``: victims with no echo after their rule (must be all).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from tests.lab import conntrack
from tests.lab.daemon import RunningDaemon, offloadd
from tests.lab.topology import Lab, lab_topology
from tests.lab.traffic import probe, udp_echo_server, wait_for

CONFIG = """
[[flowtable]]
name = "ft"
devices = ["lan*", "wan*"]
"""
ADMIN = """
table inet admin {
    chain rules { }
    chain filter_fwd { type filter hook forward priority 0; policy accept; jump rules; }
}
table ip adminnat {
    chain post { type nat hook postrouting priority 100; policy accept;
                 oifname "wan0" masquerade; }
}
"""
TRIALS = 20
UNAFFECTED = 50  # per family
KEEP, VICTIM = 7000, 7001


def _entries(lab: Lab) -> dict[tuple[int, int], conntrack.CtEntry]:
    return {(e.sport, e.dport): e for fam in (4, 6) for e in conntrack.entries(lab.router, fam)
            if e.proto == "udp" and e.dport in (KEEP, VICTIM)}


def _ready(lab: Lab) -> dict[tuple[int, int], conntrack.CtEntry] | None:
    now = _entries(lab)
    ok = len(now) >= 2 * UNAFFECTED + TRIALS and all(e.offloaded for e in now.values())
    return now if ok else None


def _last_revalidation(d: RunningDaemon) -> dict[str, Any]:
    rv: dict[str, Any] = json.loads(d.ctl("--json", "status", check=True).stdout)["revalidate"]
    return rv


def run(workdir: Path) -> dict[str, Any]:
    with lab_topology() as lab:
        lab.router.nft(ADMIN)
        s4, s6 = lab.server_addr(4), lab.server_addr(6)
        with offloadd(lab.router, CONFIG, workdir) as d, \
                udp_echo_server(lab.server, "::", KEEP), udp_echo_server(lab.server, "::", VICTIM):
            d.wait_devices("ft", {"lan0", "lan1", "wan0"})
            seconds = 600  # ended by finish() after the trials
            gens = [probe(lab.client, "udp", s4, KEEP, flows=UNAFFECTED, seconds=seconds),
                    probe(lab.client, "udp", s6, KEEP, flows=UNAFFECTED, seconds=seconds),
                    probe(lab.client, "udp", s4, VICTIM, flows=TRIALS, seconds=seconds)]
            try:
                before = wait_for(lambda: _ready(lab), 90, interval=1,
                                  what="the bench's flows offloaded")
                keep = {k: e for k, e in before.items() if k[1] == KEEP}
                victims = sorted(k[0] for k in before if k[1] == VICTIM)
                changed_at: dict[int, float] = {}
                kept: list[float] = []
                delays: list[float] = []
                for port in victims:
                    lab.router.nft(f"add rule inet admin rules udp sport {port} drop")
                    changed_at[port] = time.time()
                    time.sleep(1.0)
                    now = _entries(lab)
                    same = sum(1 for k, e in keep.items() if k in now and now[k].offloaded
                               and now[k].id == e.id and now[k].reply == e.reply)
                    kept.append(same / len(keep))
                    last = _last_revalidation(d)["last"]
                    if last:
                        delays.append(last["delay_seconds"] * 1000)
                    time.sleep(0.5)
                rv = _last_revalidation(d)
                victim_res = gens[2].finish()
            finally:
                for g in gens:
                    g.stop()
    stops = []
    stopped = 0
    for f in victim_res["flows"]:
        at = changed_at.get(f["port"])
        if at is None:
            continue
        after = [t for t in f["replies"] if t > at]
        last = max([t for t in f["replies"] if t <= at + 1.0], default=at)
        stops.append(max(0.0, last - at) * 1000)
        stopped += all(t <= at + 1.0 for t in after)
    return {
        "case": "policy",
        "trials": len(stops),
        "stop_ms_p50": round(statistics.median(stops), 1),
        "stop_ms_max": round(max(stops), 1),
        "victims_stopped": stopped,
        "unaffected_reoffloaded_1s_ratio": round(statistics.fmean(kept), 4),
        "unaffected_reoffloaded_1s_min": round(min(kept), 4),
        "revalidation_delay_ms_p50": round(statistics.median(delays), 1) if delays else None,
        "revalidations": rv["revalidations_total"],
        "samples": {"stop_ms": [round(s, 1) for s in stops], "kept": kept, "delay_ms": delays},
    }
