"""How full the gate is (offloadd.service.gatecount): counted every period once
the table has it, a failed count logged once and the last one kept stale, and
what offloadctl status says of it.

On the virtual-time loop (tests.unit.virtualtime) with the daemon's own
delays: a minute passes in no time, and each count's moment is exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

import pytest

from offloadd.cli.format import format_fill, format_gate, format_status
from offloadd.core.configparse import parse_config
from offloadd.core.gate import PASSED_ORIGINAL, PASSED_REPLY, GateFill
from offloadd.core.model import Link
from offloadd.service.daemon import Daemon
from offloadd.service.gatecount import GateCounter, count_now, next_delay
from offloadd.service.report import status_report
from offloadd.service.status import ReconcileState, Status
from offloadd.service.timing import Timing
from tests.unit.fakes import FakeBackend, FakeLinks
from tests.unit.test_daemon import CONFIG
from tests.unit.virtualtime import run_virtual

WALL0 = 1_700_000_000.0  # the Unix time at the loop's 0
HELD = {PASSED_ORIGINAL: 1234, PASSED_REPLY: 567}
EPERM = "counting the elements of set inet offloadd passed_original needs CAP_NET_ADMIN"


def _counter(b: FakeBackend) -> tuple[GateCounter, Status]:
    loop = asyncio.get_running_loop()
    status = Status(config_path=Path("/x"))
    return GateCounter(b, status, wall=lambda: WALL0 + loop.time()), status


def _fill(status: Status) -> GateFill:
    assert status.gate_fill is not None
    return status.gate_fill


def test_counted_every_period_once_the_table_has_the_gate() -> None:
    async def scenario() -> None:
        b = FakeBackend(elements=dict(HELD))
        counter, status = _counter(b)
        task = asyncio.create_task(counter.run())
        await asyncio.sleep(5)
        # No gate yet (no pass has run): looked every 2 s, nothing read.
        assert b.counts == 0 and status.gate_fill is None
        status.reconcile.gate_size = 1_048_576
        await asyncio.sleep(1.5)  # the look at 6 s counts both sets
        assert b.counts == 2 and counter.counts_total == 1
        assert _fill(status).elements == HELD and not _fill(status).stale
        assert _fill(status).time == pytest.approx(WALL0 + 6)
        b.elements[PASSED_REPLY] = 600
        await asyncio.sleep(59)  # 65.5 s: a period has not passed yet
        assert b.counts == 2
        await asyncio.sleep(1)
        assert b.counts == 4 and _fill(status).elements[PASSED_REPLY] == 600
        assert _fill(status).time == pytest.approx(WALL0 + 66)
        status.reconcile.gate_size = 0  # the gate went away: no fill to tell
        await asyncio.sleep(60)
        assert status.gate_fill is None and b.counts == 4
        task.cancel()

    run_virtual(scenario)


def test_a_costly_count_pushes_the_next_one_out() -> None:
    # The kernel's dump is quadratic in the elements: a count that took 2 s
    # waits 200 s for the next (1 % of a CPU), a cheap one the interval.
    t = Timing()
    assert next_delay(t, 0.05) == t.gate_count_interval_s == 60.0
    assert next_delay(t, 2.0) == pytest.approx(200.0)


def test_a_failed_count_is_logged_once_and_keeps_the_last_marked_stale(
        caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        b = FakeBackend(elements=dict(HELD))
        counter, status = _counter(b)
        status.reconcile.gate_size = 1_048_576
        task = asyncio.create_task(counter.run())
        await asyncio.sleep(1)  # counted at 0 s
        b.count_fail = EPERM
        await asyncio.sleep(120)  # failed at 60 and 120 s
        fill = _fill(status)
        assert fill.stale and fill.error == EPERM
        assert fill.elements == HELD and fill.time == pytest.approx(WALL0)
        b.count_fail = ""
        b.elements[PASSED_ORIGINAL] = 2000
        await asyncio.sleep(60)
        assert _fill(status) == GateFill({PASSED_ORIGINAL: 2000, PASSED_REPLY: 567},
                                         pytest.approx(WALL0 + 180))  # type: ignore[arg-type]
        task.cancel()

    with caplog.at_level(logging.INFO, logger="offloadd"):
        run_virtual(scenario)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"gate count: cannot count the gate's elements: {EPERM} (the last "
                        "count is kept, marked stale)"]
    assert "gate count: counted again (passed_original 2000, passed_reply 567)" in (
        caplog.messages)


def test_a_count_waits_after_each_datagram_for_its_cpu_share() -> None:
    """Share 0.25: each datagram whose walk took 10 ms of CPU is followed by
    30 ms of waiting. The duty counts the count's CPU, status its duration."""
    async def scenario() -> None:
        b = FakeBackend(elements=dict(HELD), count_walks=(0.01, 0.01))
        status = Status(config_path=Path("/x"))
        status.reconcile.gate_size = 1_048_576
        cpu = iter([3.0, 3.5])
        progress: list[int] = []
        counter = GateCounter(b, status, timing=Timing(gate_count_cpu_share=0.25),
                              cpu=lambda: next(cpu), progress=lambda: progress.append(1))
        await counter.count()
        assert len(progress) == 4  # each datagram tells the supervisor: not stalled
        assert counter.last_cost_s == 0.5
        assert counter.last_wall_s >= 4 * 0.03  # 2 sets x 2 datagrams
        assert _fill(status).duration_s == counter.last_wall_s
        assert next_delay(counter._timing, counter.last_cost_s) == 60.0

    asyncio.run(scenario())


def test_a_stopping_daemon_ends_a_count_at_its_next_wait() -> None:
    """A paced count on a full gate may have minutes to go; the daemon's
    stop (its task cancelled) must not wait for it."""
    async def scenario() -> None:
        b = FakeBackend(elements=dict(HELD), count_walks=(60.0, 60.0))  # 9 min waits
        status = Status(config_path=Path("/x"))
        status.reconcile.gate_size = 1_048_576
        counter = GateCounter(b, status)
        task = asyncio.create_task(counter.run())
        await asyncio.sleep(0.2)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        t0 = time.monotonic()
        counter._worker.shutdown(wait=True)
        assert time.monotonic() - t0 < 5
        assert status.gate_fill is None and b.counts == 1

    asyncio.run(scenario())


def test_a_missing_set_or_a_first_count_that_fails_is_stale_too() -> None:
    async def scenario() -> None:
        b = FakeBackend(elements={PASSED_ORIGINAL: 5}, count_fail=EPERM)
        counter, status = _counter(b)
        status.reconcile.gate_size = 1_048_576
        await counter.count()
        assert status.gate_fill == GateFill(error=EPERM)  # nothing counted yet
        b.count_fail = ""
        await counter.count()  # passed_reply is not there
        assert status.gate_fill == GateFill(
            error="gate set passed_reply is not in offloadd's table")

    run_virtual(scenario)


def _gate(fill: GateFill | None, now: float) -> str:
    status = Status(config_path=Path("/x"),
                    reconcile=ReconcileState(gate_size=2_097_152, conntrack_max=1_048_576))
    status.gate.fill = fill
    report = status_report(status, "offloadd", "inet", None, now=now)
    report["gate"]["sets"] = 2  # as a pass leaves it (no desired state here)
    lines = format_gate(report["gate"])
    assert len(lines) == 1
    return lines[0]


def test_status_line_says_how_full_the_gate_is() -> None:
    head = "gate: 2 sets of up to 2097152 flows (2 x nf_conntrack_max 1048576)"
    assert _gate(None, WALL0) == head  # not counted yet
    fresh = GateFill(HELD, WALL0)
    assert _gate(fresh, WALL0 + 12) == f"{head}; holds 1234 / 567 (0.1 %), counted 12s ago"
    full = GateFill({PASSED_ORIGINAL: 1_900_000, PASSED_REPLY: 2_000_000}, WALL0)
    assert _gate(full, WALL0 + 300).endswith("holds 1900000 / 2000000 (95.4 %), "
                                             "counted 5m ago")
    assert _gate(fresh.failed(EPERM), WALL0 + 180) == (
        f"{head}; holds 1234 / 567 (0.1 %), counted 3m ago; STALE, the last count "
        f"failed: {EPERM}")
    assert _gate(GateFill(error=EPERM), WALL0) == f"{head}; not counted: {EPERM}"
    at_capacity = GateFill({PASSED_ORIGINAL: 2_097_152, PASSED_REPLY: 10}, WALL0)
    assert _gate(at_capacity, WALL0 + 1).endswith(
        "(100.0 %), counted 1s ago; FULL: flows it cannot record stay on the slow path "
        "(never offloaded unchecked) until entries expire")


def test_status_report_carries_the_fill() -> None:
    status = Status(config_path=Path("/x"), reconcile=ReconcileState(gate_size=2_097_152))
    status.gate.fill = GateFill(HELD, WALL0).failed("boom")
    fill = status_report(status, "offloadd", "inet", None, now=WALL0 + 61.25)["gate"]["fill"]
    assert fill == {"elements": HELD, "timestamp": WALL0, "age_seconds": 61.2,
                    "stale": True, "error": "boom", "duration_seconds": 0.0}


def test_a_long_count_is_shown_with_its_duration() -> None:
    """At a million elements the kernel's walk takes seconds: the gate line
    says so (a short count says nothing)."""
    status = Status(config_path=Path("/x"), reconcile=ReconcileState(gate_size=2_097_152))
    status.gate.fill = GateFill(HELD, WALL0, duration_s=3.14)
    rep = status_report(status, "offloadd", "inet", None, now=WALL0 + 5)
    assert rep["gate"]["fill"]["duration_seconds"] == 3.14
    assert format_fill(rep["gate"]["fill"], 2_097_152).endswith("counted 5s ago (a 3.1-s count)")


def test_the_daemon_counts_its_gate_soon_after_the_first_pass(tmp_path: Path) -> None:
    """A supervised task: the fill shows seconds after the gate exists, then
    every Timing.gate_count_interval_s."""
    async def scenario() -> None:
        path = tmp_path / "offloadd.toml"
        path.write_text(CONFIG)
        b = FakeBackend(elements=dict(HELD))
        d = Daemon(path, parse_config(CONFIG), b, links=FakeLinks(),
                   clock=asyncio.get_running_loop().time)
        assert isinstance(d.link_source, FakeLinks)
        task = asyncio.create_task(d.run(signals=(), control=False))
        await asyncio.sleep(10)
        assert b.counts == 0  # no links, no pass, no gate
        d.link_source.push(Link(1, "lan0", "veth"), Link(2, "wan0", "veth"))
        await asyncio.sleep(2.5)
        assert d.status.gate_size and b.counts == 2
        fill = _fill(d.status)
        assert fill.elements == HELD
        text = format_status(status_report(d.status, "offloadd", "inet", b.read(),
                                           now=fill.time + 5))
        assert ("gate: 2 sets of up to 1048576 flows (the minimum; nf_conntrack_max "
                "unreadable); holds 1234 / 567 (0.1 %), counted 5s ago") in text
        assert d.supervisor.states["gate-count"].up
        await asyncio.sleep(Timing().gate_count_interval_s)
        assert b.counts == 4
        d.request_stop()
        await asyncio.wait_for(task, 5)

    run_virtual(scenario)


def test_offloadctl_counts_at_once_while_the_daemon_is_down() -> None:
    """offloadctl status without a daemon (cli.ctlkernel) counts the gate itself."""
    assert count_now(FakeBackend(elements=dict(HELD)), wall=lambda: WALL0) == GateFill(
        HELD, WALL0)
    assert count_now(FakeBackend(count_fail=EPERM)) == GateFill(error=EPERM)
