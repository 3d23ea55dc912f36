"""The exporter against the oracles: conntrack-tools' count and a real Prometheus.

The count is served from memory (one conntrack walk every
metrics.flow_count_interval while scraped): a scrape shows the oracle's count
once a walk after the flows were offloaded has ended, with its age.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.lab import conntrack
from tests.lab.daemon import offloadd
from tests.lab.prom import http_get, prometheus, query
from tests.lab.topology import Lab
from tests.lab.traffic import (
    SETTLE_S,
    offloaded_udp_flows,
    udp_echo_server,
    udp_flows,
    wait_for,
)

CONFIG = """
[metrics]
listen = "127.0.0.1:9468"
flow_count_interval = 2

[[flowtable]]
name = "ft"
devices = ["lan*", "wan*"]
"""
V4, V6 = 24, 12


def _metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_offloaded_flows_metric_equals_conntrack_and_prometheus(lab: Lab, tmp_path: Path) -> None:
    r = lab.router
    with offloadd(r, CONFIG, tmp_path) as d, udp_echo_server(lab.server, "::"):
        d.wait_devices("ft", {"lan0", "lan1", "wan0"})
        with offloaded_udp_flows(lab, V4, V6):
            def counted() -> str | None:
                text = http_get(r, "http://127.0.0.1:9468/metrics")
                got = [_metric(text, "offloadd_offloaded_flows", family=fam, mode="software")
                       for fam in ("ipv4", "ipv6")]
                return text if got == [V4, V6] else None

            # The walk that began before the flows were offloaded is served
            # until the next one: a few periods at most.
            text = wait_for(counted, 60, interval=0.5, what="the scraped count to follow")
            age = _metric(text, "offloadd_offloaded_flows_age_seconds")
            assert age is not None and age >= 0, text
            print(f"scraped count {V4}+{V6}, {age:.2f} s old (a walk every 2 s)")
            for fam, want in (("ipv4", V4), ("ipv6", V6)):
                got = _metric(text, "offloadd_offloaded_flows", family=fam, mode="software")
                oracle = conntrack.offloaded_count(r, 4 if fam == "ipv4" else 6)
                assert got == oracle == want, (fam, got, oracle)
                assert _metric(text, "offloadd_offloaded_flows", family=fam,
                               mode="hardware") == 0
            assert _metric(text, "offloadd_flowtable_devices", flowtable="ft",
                           state="attached") == 3
            assert _metric(text, "offloadd_source_up", source="conntrack") == 1

            check = subprocess.run(["promtool", "check", "metrics"], input=text,
                                   capture_output=True, text=True, check=False)
            assert check.returncode == 0, check.stdout + check.stderr

            with prometheus(r, tmp_path, "127.0.0.1:9468") as base:
                def scraped() -> list[float] | None:
                    res = query(r, base, 'offloadd_offloaded_flows{mode="software"}')
                    vals = {x["metric"]["family"]: float(x["value"][1]) for x in res}
                    return [vals["ipv4"], vals["ipv6"]] if len(vals) == 2 else None

                got = wait_for(scraped, 60, interval=1, what="prometheus to scrape offloadd")
                assert got == [conntrack.offloaded_count(r, 4), conntrack.offloaded_count(r, 6)]
                # Scrapes succeed (an emulated CPU may miss one now and then).
                up = query(r, base, 'max_over_time(up{job="offloadd"}[5m])')
                assert up and up[0]["value"][1] == "1"


# Counts offloaded entries in the namespace it runs in, each way the counter
# can: directly (AF_UNSPEC), and from the entries not offloaded with the
# table's total, dumping IPv6's (10) or IPv4's (2) offloaded entries.
COUNT_EACH_WAY = (
    "import json, socket; from offloadd.kernel import conntrack as ct\n"
    "out = {}\n"
    "for walk in (socket.AF_UNSPEC, socket.AF_INET6, socket.AF_INET):\n"
    "    o = ct.count_offloaded(walk=walk)\n"
    "    out[int(walk)] = [o.ipv4.software, o.ipv4.hardware, o.ipv6.software, o.ipv6.hardware]\n"
    "print(json.dumps({'counts': out, 'total': ct.conntrack_totals().count}))\n")


def test_offloaded_count_derived_from_the_rest_equals_conntrack(lab: Lab,
                                                                tmp_path: Path) -> None:
    # At 1M offloaded flows the counter dumps the entries *not* offloaded and
    # derives the offloaded count from the kernel's total (offloadd.core.countplan):
    # on a real table, beside entries that are not offloaded (unanswered UDP),
    # each way gives conntrack's count.
    r = lab.router
    with offloadd(r, CONFIG, tmp_path) as d, udp_echo_server(lab.server, "::"):
        d.wait_devices("ft", {"lan0", "lan1", "wan0"})
        with offloaded_udp_flows(lab, V4, V6):
            unanswered = [udp_flows(lab.client, lab.server_addr(fam), port=7001, flows=5,
                                    seconds=60, interval=0.5) for fam in (4, 6)]
            try:
                def others() -> int | None:
                    n = len(conntrack.entries(r, 4)) + len(conntrack.entries(r, 6)) - V4 - V6
                    return n if n >= 10 else None

                rest = wait_for(others, 30, what="10 entries that are not offloaded")
                got = json.loads(r.out(sys.executable, "-c", COUNT_EACH_WAY))
                oracle = [conntrack.offloaded_count(r, 4), conntrack.offloaded_count(r, 6)]
            finally:
                for g in unanswered:
                    g.stop()
    assert oracle == [V4, V6]
    print(f"total {got['total']} entries, {V4}+{V6} offloaded: {got['counts']}")
    assert got["total"] >= V4 + V6 + 10, got
    for walk, counts in got["counts"].items():
        assert counts == [V4, 0, V6, 0], (walk, counts, rest)


def test_the_tables_metrics_follow_a_new_link_from_the_loops_read(lab: Lab,
                                                                   tmp_path: Path) -> None:
    """The table's metrics come from the event loop's latest read (a scrape
    reads the table only when that is older than check_interval + 5 s): a
    device attached shows at once, with the read's age."""
    r = lab.router
    url = "http://127.0.0.1:9468/metrics"
    with offloadd(r, CONFIG, tmp_path) as d:
        d.wait_devices("ft", {"lan0", "lan1", "wan0"})
        text = http_get(r, url)
        assert _metric(text, "offloadd_flowtable_devices", flowtable="ft",
                       state="attached") == 3, text
        assert _metric(text, "offloadd_kernel_state_matches") == 1, text
        age = _metric(text, "offloadd_table_read_age_seconds")
        assert age is not None and 0 <= age <= 60 + 5, text  # check_interval 60 (default)
        r.run("ip", "link", "add", "lan7", "type", "veth", "peer", "name", "plan7")

        def four() -> str | None:
            text = http_get(r, url)
            n = _metric(text, "offloadd_flowtable_devices", flowtable="ft", state="attached")
            return text if n == 4 else None

        text = wait_for(four, SETTLE_S, interval=0.5, what="lan7 attached in the metrics")
        assert d.flowtable_devices("ft") == frozenset({"lan0", "lan1", "lan7", "wan0"})
        assert _metric(text, "offloadd_kernel_state_matches") == 1, text
