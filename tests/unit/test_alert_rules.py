"""The Prometheus alert rules name only metrics offloadd exports, and every
alert has promtool tests (`make test-alerts` runs them)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.unit.metricnames import EXPORTED, used_metrics

RULES = Path(__file__).resolve().parents[2] / "contrib" / "prometheus"


def test_rules_use_only_exported_metrics() -> None:
    used = used_metrics((RULES / "offloadd.rules.yml").read_text())
    assert used, "no offloadd metric found in the rules"
    assert used <= EXPORTED, used - EXPORTED


def test_every_alert_has_tests_that_fire_and_that_do_not() -> None:
    alerts = re.findall(r"^\s*- alert: (\w+)$", (RULES / "offloadd.rules.yml").read_text(), re.M)
    tests = (RULES / "offloadd.rules.test.yml").read_text()
    cases = re.findall(r"alertname: (\w+)\n\s*exp_alerts:( \[\])?", tests)
    for alert in alerts:
        outcomes = {quiet == "" for name, quiet in cases if name == alert}
        assert outcomes == {True, False}, f"{alert}: needs a firing and a quiet test case"
