"""Every query of the Grafana dashboard (contrib/grafana/offloadd.json) returns
data from a real Prometheus that scraped a real offloadd with flows offloaded.

The counters the dashboard rates move while Prometheus scrapes: a device joins
the flowtable (link events, a reconcile and a transaction), the admin adds a
rule in a table of their own (a policy change and a re-validation, which also
gives the last re-validation's time), and the config is reloaded. Dashboard
variables get fixed values ($__rate_interval a window that spans the test);
the variables' own label_values() queries are asked of the series API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_metrics import CONFIG
from tests.lab import grafana
from tests.lab.daemon import offloadd
from tests.lab.prom import label_values, prometheus, query, query_many
from tests.lab.topology import Lab
from tests.lab.traffic import SETTLE_S, offloaded_udp_flows, udp_echo_server, wait_for

TARGET = "127.0.0.1:9468"
VARIABLES = {"job": "offloadd", "instance": TARGET, "__rate_interval": "5m"}
V4, V6 = 8, 4
ADMIN = """
table inet dashboard_admin {
    chain filter_fwd { type filter hook forward priority 0; policy accept; }
}
add rule inet dashboard_admin filter_fwd udp dport 9 counter drop
"""


def _values(res: list[dict[str, Any]]) -> dict[str, float]:
    """Series (labels joined, sorted) -> value, for an instant vector."""
    return {",".join(f"{k}={v}" for k, v in sorted(x["metric"].items())): float(x["value"][1])
            for x in res}


@pytest.mark.one_kernel
def test_every_dashboard_query_returns_data(lab: Lab, tmp_path: Path) -> None:
    dash = grafana.load()
    queries = grafana.queries(dash, VARIABLES)
    r = lab.router
    with offloadd(r, CONFIG, tmp_path) as d, udp_echo_server(lab.server, "::"):
        d.wait_devices("ft", {"lan0", "lan1", "wan0"})
        with offloaded_udp_flows(lab, V4, V6), prometheus(r, tmp_path, TARGET) as base:
            wait_for(lambda: query(r, base, 'up{job="offloadd"} == 1'), 60, interval=1,
                     what="a first scrape of offloadd")
            # Counters move between scrapes.
            r.run("ip", "link", "add", "lan7", "type", "dummy")
            r.run("ip", "link", "set", "lan7", "up")
            d.wait_devices("ft", {"lan0", "lan1", "lan7", "wan0"})
            r.nft(ADMIN)
            d.ctl("reload", check=True)
            wait_for(lambda: query(r, base, "offloadd_last_revalidation_timestamp_seconds"),
                     60, interval=1, what="a re-validation scraped")

            def missing() -> list[grafana.Query]:
                results = query_many(r, base, [q.expr for q in queries])
                return [q for q, res in zip(queries, results, strict=True) if not res]

            try:
                wait_for(lambda: not missing(), 90, interval=2,
                         what="every dashboard query to return data")
            except AssertionError:
                raise AssertionError("no data for: " + "; ".join(
                    f"{q.panel} [{q.ref}] {q.expr}" for q in missing())) from None

            for v in grafana.variable_queries(dash, VARIABLES):
                listed = label_values(r, base, v.label, v.selector)
                assert listed == [VARIABLES[v.name]], (v, listed)

            # The figures behind the main panels, as the test made them
            # (polled: the last scrape may predate the last change by 2 s).
            by_panel = {(q.panel, q.ref): q.expr for q in queries}
            seen: dict[str, dict[str, float]] = {}

            def figures_as_made() -> bool:
                results = query_many(r, base, list(by_panel.values()))
                for (panel, ref), res in zip(by_panel, results, strict=True):
                    seen[f"{panel} [{ref}]"] = _values(res)
                flows = seen["Offloaded flows by family and mode vs conntrack entries [A]"]
                moved = [seen[k] for k in (
                    "Link events and resyncs [A]",
                    "Reconciles, transactions and failures [A]",
                    "Reconciles, transactions and failures [B]",
                    "Policy changes and re-validations [A]",
                    "Policy changes and re-validations [B]",
                    "Config reloads [A]")]
                return (flows.get("family=ipv4,mode=software", 0) > 0
                        and flows.get("family=ipv6,mode=software", 0) > 0
                        and seen["Devices per flowtable: desired vs attached [A]"] == {
                            "flowtable=ft,state=attached": 4,
                            "flowtable=ft,state=declared": 0,
                            "flowtable=ft,state=desired": 4}
                        and all(m and min(m.values()) > 0 for m in moved)
                        and list(seen["Kernel state [A]"].values()) == [1])

            try:
                wait_for(figures_as_made, SETTLE_S, interval=2, what="the panels' figures")
            except AssertionError:
                raise AssertionError("figures: " + "\n".join(
                    f"{k}: {v}" for k, v in seen.items())) from None
        r.run("nft", "delete", "table", "inet", "dashboard_admin", check=False)
