"""The unit's resource bounds stay above what offloadd's own caps need.

Why a unit test: the caps live in the code (the exporter's and the control
socket's LIMITS) and the bounds in systemd/offloadd.service; raising a cap
without the bound would bring back the exhaustion the caps are there to stop.
"""

from __future__ import annotations

from pathlib import Path

from offloadd.service.control import LIMITS as CONTROL
from offloadd.service.exporter import LIMITS as METRICS

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "offloadd.service"
# Descriptors and threads offloadd needs besides its connections (netlink
# sockets, libnftables, the journal; the loop, asyncio's executor, the scan).
OWN_FDS = 64
OWN_TASKS = 48


def _service() -> dict[str, str]:
    section, out = "", {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def test_descriptors_hold_both_endpoints_full_and_the_daemon() -> None:
    nofile = _service()["LimitNOFILE"]
    assert ":" not in nofile, "one value: soft and hard alike"
    assert int(nofile) >= METRICS.max_connections + CONTROL.max_connections + OWN_FDS


def test_tasks_hold_a_thread_per_metrics_connection() -> None:
    # Twice: the thread of a connection closed to make room may still be
    # on its way out when the next one starts.
    assert int(_service()["TasksMax"]) >= METRICS.max_connections * 2 + OWN_TASKS


def test_memory_is_bounded() -> None:
    value = _service()["MemoryMax"]
    assert value.endswith("M") and 256 <= int(value[:-1]) <= 1024, value
