"""The metric names offloadd exports, and those a text (PromQL, alert rules, a
dashboard) names: what contrib/ uses must exist."""

from __future__ import annotations

import re

from offloadd.service.metrics import SPECS

EXPORTED = frozenset(s.name for s in SPECS)


def used_metrics(text: str) -> set[str]:
    return set(re.findall(r"\boffloadd_[a-z_]+", text))
