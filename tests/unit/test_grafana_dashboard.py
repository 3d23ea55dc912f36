"""The Grafana dashboard (contrib/grafana/offloadd.json) is importable into
Grafana 10+ with a Prometheus data source chosen at import (${DS_PROMETHEUS}),
every panel queries that data source with valid PromQL, and it names only
metrics offloadd exports, all of them. tests/integration/test_dashboard.py runs
every query against a real Prometheus scraping a real offloadd."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.lab import grafana
from tests.unit.metricnames import EXPORTED, used_metrics

DASH = grafana.load()
# The values the variables get in the tests (Grafana fills them in at run time).
VARIABLES = {"job": "offloadd", "instance": "127.0.0.1:9468", "__rate_interval": "5m"}


def _panels() -> list[dict[str, Any]]:
    return list(grafana.panels(DASH))


def test_importable_with_a_prometheus_input() -> None:
    assert DASH["__inputs"] == [{
        "name": "DS_PROMETHEUS", "label": "Prometheus",
        "description": "The Prometheus that scrapes offloadd",
        "type": "datasource", "pluginId": "prometheus", "pluginName": "Prometheus"}]
    grafana_req = [r for r in DASH["__requires"] if r["type"] == "grafana"]
    assert grafana_req and int(grafana_req[0]["version"].split(".")[0]) >= 10
    assert DASH["schemaVersion"] >= 38
    assert DASH["id"] is None and DASH["uid"] == "offloadd"
    kinds = {p["type"] for p in _panels()}
    assert kinds <= {r["id"] for r in DASH["__requires"] if r["type"] == "panel"}


def test_every_panel_and_variable_uses_the_input_datasource() -> None:
    for p in _panels():
        assert p["datasource"] == {"type": "prometheus", "uid": grafana.DATASOURCE_UID}, p["title"]
        assert p["targets"], f"{p['title']}: no query"
        refs = [t["refId"] for t in p["targets"]]
        assert len(set(refs)) == len(refs), f"{p['title']}: refIds {refs}"
        for t in p["targets"]:
            assert t["datasource"]["uid"] == grafana.DATASOURCE_UID, p["title"]
            assert isinstance(t["expr"], str) and t["expr"].strip(), f"{p['title']}: no expr"
    for v in DASH["templating"]["list"]:
        assert v["datasource"]["uid"] == grafana.DATASOURCE_UID, v["name"]
    # Nothing else names a data source: an exported dashboard with a local uid
    # would not import elsewhere.
    text = json.dumps(DASH)
    assert text.count('"uid": "${DS_PROMETHEUS}"') == text.count('"type": "prometheus"')


def test_layout_ids_unique_and_no_overlap() -> None:
    ids = [p["id"] for p in DASH["panels"]] + [p["id"] for p in _panels()
                                              if p not in DASH["panels"]]
    assert len(set(ids)) == len(ids), ids
    cells: dict[tuple[int, int], str] = {}
    for p in DASH["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


def test_names_only_exported_metrics_and_every_one_of_them() -> None:
    exprs = [q.expr for q in grafana.queries(DASH, VARIABLES)]
    used = set().union(*(used_metrics(e) for e in exprs))
    assert used <= EXPORTED, used - EXPORTED
    # A metric added to offloadd gets a panel (or this test is changed on purpose).
    assert used == EXPORTED, EXPORTED - used
    variables = grafana.variable_queries(DASH, VARIABLES)
    assert {v.name for v in variables} == {"job", "instance"}
    for v in variables:
        assert used_metrics(v.selector) <= EXPORTED, v


def test_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool checks each query (variables filled in) as a recording rule."""
    queries = grafana.queries(DASH, VARIABLES)
    rules = tmp_path / "dashboard.rules.yml"
    rules.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": q.expr} for i, q in enumerate(queries)]}]}))
    proc = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(queries)} rules found" in proc.stdout, proc.stdout


def test_variables_substituted_everywhere() -> None:
    for q in grafana.queries(DASH, VARIABLES):
        assert "$" not in q.expr, q
    try:
        grafana.substitute("rate(x[$__interval])", VARIABLES)
    except KeyError as e:
        assert "__interval" in str(e)
    else:
        raise AssertionError("an unknown variable must not pass")
