"""The Grafana dashboard (contrib/grafana/offloadd.json) as queries to run.

Pure (no root, no kernel): the unit tests check its structure and PromQL with
it, the integration suite runs every query against a real Prometheus.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parents[2] / "contrib" / "grafana" / "offloadd.json"
DATASOURCE_UID = "${DS_PROMETHEUS}"
_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
_LABEL_VALUES = re.compile(r"label_values\((?:(.+),\s*)?(\w+)\)$")


@dataclass(frozen=True)
class Query:
    panel: str
    ref: str
    expr: str


@dataclass(frozen=True)
class VariableQuery:
    """A dashboard variable's `label_values(selector, label)`."""

    name: str
    selector: str
    label: str


def load(path: Path = DASHBOARD) -> dict[str, Any]:
    dash: dict[str, Any] = json.loads(path.read_text())
    return dash


def panels(dash: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that is not a row, those inside collapsed rows too."""
    for p in dash["panels"]:
        if p["type"] == "row":
            yield from p.get("panels", [])
        else:
            yield p


def substitute(text: str, variables: Mapping[str, str]) -> str:
    """Grafana's $var and ${var} replaced by fixed values; unknown ones are an error."""
    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in variables:
            raise KeyError(f"dashboard variable ${name} has no value (in {text!r})")
        return variables[name]
    return _VAR.sub(value, text)


def queries(dash: Mapping[str, Any], variables: Mapping[str, str]) -> list[Query]:
    return [Query(p["title"], t["refId"], substitute(t["expr"], variables))
            for p in panels(dash) for t in p.get("targets", [])]


def variable_queries(dash: Mapping[str, Any],
                     variables: Mapping[str, str]) -> list[VariableQuery]:
    out = []
    for v in dash["templating"]["list"]:
        if v["type"] != "query":
            continue
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = _LABEL_VALUES.match(q.strip())
        if not m:
            raise ValueError(f"variable {v['name']}: not label_values(...): {q}")
        out.append(VariableQuery(v["name"], substitute(m.group(1) or "", variables),
                                 m.group(2)))
    return out
