"""Scrape case: one /metrics scrape with ~100k offloaded flows vs conntrack -L.

The guest's initial namespace gets a large conntrack table (bench.run does
that before any namespace exists); the router's flowtable UDP timeout is
raised so the flows stay offloaded while they sit idle. A client opens the
flows against a UDP echo server in batches, one datagram + echo each (those
whose echo is lost are retried; what really ended offloaded is counted, not
assumed). Then, in alternating rounds inside the router: a GET of the
daemon's /metrics and ``conntrack -L -u OFFLOAD | wc -l``. The two counts must
agree (the case fails if not; each flow sends a second datagram after its
echo, which offloadd's gate needs to offload it): the metric comes from offloadd's last conntrack
walk (metrics.flow_count_interval, 5 s here), so the rounds start once a
scrape shows the settled count; ``count_age_s`` is that count's age at each
scrape, and ``walk_wait_s`` how long the count took to follow. The daemon's
RSS is read after a warm-up scrape with no flows, before the rounds with 100k
flows and after them: ``scrape_rss_growth_mb`` is what scraping 100k flows left
behind,
``rss_growth_0_to_100k_mb`` the whole difference from the empty table.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import echo_server, open_flows, rss_mb
from tests.lab.daemon import offloadd
from tests.lab.topology import lab_topology
from tests.lab.traffic import wait_for

CONFIG = """
[metrics]
flow_count_interval = 5

[[flowtable]]
name = "ft"
devices = ["lan*", "wan*"]
"""
FLOWS = 100_000
PORTS = [7000, 7001]
ROUNDS = 3


def run(workdir: Path, flows: int = FLOWS, rounds: int = ROUNDS) -> dict[str, Any]:
    with lab_topology() as lab:
        r = lab.router
        r.sysctl("net.netfilter.nf_flowtable_udp_timeout", 3600)
        with offloadd(r, CONFIG, workdir) as d, echo_server(lab.server, PORTS):
            d.wait_devices("ft", {"lan0", "lan1", "wan0"})
            # Warm-up (in the router, where the exporter listens): what any
            # first scrape allocates is not per flow.
            r.run(sys.executable, "-m", "bench.scrape_probe", "--rounds", "1", timeout=300)
            rss_empty = rss_mb(d.proc.pid)
            opened = open_flows(lab.client, lab.wan.host_v4, PORTS, flows)
            print(f"  scrape: flows opened {json.dumps(opened)}", flush=True)
            # Settle: the last echoes are forwarded and offloaded.
            last: list[int] = []

            def settled() -> bool:
                last.append(int(r.sh("conntrack -L -u OFFLOAD 2>/dev/null | wc -l")))
                return len(last) > 1 and last[-1] == last[-2]

            wait_for(settled, 120, interval=2, what="offloaded count to settle")
            t0 = time.monotonic()

            def followed() -> bool:
                row = json.loads(r.run(sys.executable, "-m", "bench.scrape_probe", "--rounds",
                                       "1", timeout=300).stdout)["rounds"][0]
                return bool(row["metric_flows"] == row["conntrack_flows"])

            wait_for(followed, 120, interval=1, what="the scraped count to follow conntrack")
            walk_wait_s = round(time.monotonic() - t0, 1)
            rss_before = rss_mb(d.proc.pid)
            proc = r.run(sys.executable, "-m", "bench.scrape_probe", "--rounds", str(rounds),
                         timeout=1200)
            rss_after = rss_mb(d.proc.pid)
    rows = json.loads(proc.stdout)["rounds"]
    scrape_s = statistics.median(x["scrape_s"] for x in rows)
    ct_s = statistics.median(x["conntrack_s"] for x in rows)
    offloaded = rows[-1]["metric_flows"]
    res: dict[str, Any] = {
        "case": "scrape",
        "samples": rows,
        "flows_attempted": flows,
        "flows_established": opened["established"],
        "flows_setup_s": opened["setup_s"],
        "offloaded_flows": offloaded,
        "offloaded_flows_conntrack": rows[-1]["conntrack_flows"],
        # Both sets: two per offloaded flow (each direction passed).
        "gate_elements": rows[-1].get("gate_elements"),
        "scrape_s": scrape_s,
        "count_age_s": [x.get("count_age_s") for x in rows],
        "walk_wait_s": walk_wait_s,
        "conntrack_s": ct_s,
        "scrape_vs_conntrack_ratio": round(scrape_s / ct_s, 3),
        "rss_no_flows_mb": rss_empty,
        "rss_before_mb": rss_before,
        "rss_after_mb": rss_after,
        "scrape_rss_growth_mb": round(rss_after - rss_before, 1),
        "rss_growth_0_to_100k_mb": round(rss_after - rss_empty, 1),
    }
    disagree = [x for x in rows if x["metric_flows"] != x["conntrack_flows"]]
    if offloaded < 0.9 * opened["established"]:
        # A scrape of a table of flows that are not offloaded measures nothing
        # this case is about (what happened on 12-02: 0 of 100k).
        res["error"] = (f"{offloaded} of {opened['established']} established flows "
                        "offloaded (>= 90 % needed)")
    elif disagree:
        res["error"] = f"metric and conntrack disagree: {disagree}"
    return res
