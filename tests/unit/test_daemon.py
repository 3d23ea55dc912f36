"""The reconcile loop against in-memory fakes: minimal changes, verify, reload.

The tests of the running loop (retries, backoff, the periodic check) run on
a virtual clock (tests.unit.virtualtime) with the daemon's own delays:
exact, instant, and not flaky on a slow machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from offloadd.cli.format import format_check, format_gate, format_status
from offloadd.core.attach import KernelHooks
from offloadd.core.configparse import parse_config
from offloadd.core.errors import NftError, VerifyError
from offloadd.core.gate import PASSED_SIZE
from offloadd.core.model import Link, SetKind, TableState
from offloadd.core.plan import (
    AddFlowtableDevices,
    AddSetElements,
    CreateSet,
    CreateTable,
    DeleteFlowtable,
    DeleteSet,
    teardown_plan,
)
from offloadd.core.render import render
from offloadd.core.revalidate import NftChanges, ObjectKind, TableChange, Transaction, Verb
from offloadd.service.daemon import VANISHED_RETRIES, Daemon
from offloadd.service.report import status_report
from tests.unit.fakes import FakeBackend, FakeLinks
from tests.unit.virtualtime import run_virtual

CONFIG = """
[daemon]
table = "offloadd"
[[flowtable]]
name = "ft"
devices = ["lan*", "wan*"]
"""

LAN0 = Link(1, "lan0", "veth")
WAN0 = Link(2, "wan0", "veth")
LAN5 = Link(5, "lan5", "veth")
OTHER = Link(6, "eth9", "veth")


def _daemon(tmp_path: Path, text: str = CONFIG, backend: FakeBackend | None = None,
            clock: Callable[[], float] = time.monotonic) -> tuple[Daemon, FakeBackend]:
    path = tmp_path / "offloadd.toml"
    path.write_text(text)
    b = backend or FakeBackend()
    return Daemon(path, parse_config(text), b, links=FakeLinks(), clock=clock), b


def _on_loop(tmp_path: Path, text: str = CONFIG) -> tuple[Daemon, FakeBackend]:
    """A daemon for the running loop: its deadlines on that loop's (virtual) clock."""
    return _daemon(tmp_path, text, clock=asyncio.get_running_loop().time)


def test_first_reconcile_creates_table_with_matching_devices(tmp_path: Path) -> None:
    d, b = _daemon(tmp_path)
    d.status.links = (LAN0, WAN0, OTHER)
    plan = d.reconcile()
    assert isinstance(plan.ops[0], CreateTable)
    assert b.state is not None
    ft = b.state.flowtable("ft")
    assert ft is not None and ft.devices == {"lan0", "wan0"}
    assert d.reconcile().is_empty  # idempotent


def test_new_device_touches_only_devices_and_set_elements(tmp_path: Path) -> None:
    d, _b = _daemon(tmp_path)
    d.status.links = (LAN0, WAN0)
    d.reconcile()
    d.status.links = (LAN0, WAN0, LAN5)
    plan = d.reconcile()
    assert {type(op) for op in plan.ops} == {AddFlowtableDevices, AddSetElements}


def test_auto_priority_runs_after_other_forward_chains(tmp_path: Path) -> None:
    d, b = _daemon(tmp_path, backend=FakeBackend(others=[0, 10, -150]))
    d.reconcile()
    assert b.state is not None and b.state.chain is not None
    assert b.state.chain.priority == 11


def test_other_priorities_are_read_again_only_when_they_may_have_changed(
        tmp_path: Path) -> None:
    """While nf_tables events are watched, a device change reuses the other
    tables' priorities; an event that touches their chains drops them."""
    d, b = _daemon(tmp_path, backend=FakeBackend(others=[10]))
    d.status.links = (LAN0,)
    d.reconcile()
    b.others = [20]  # unwatched: seen at the next pass
    d.status.links = (LAN0, WAN0)
    d.reconcile()
    assert b.state is not None and b.state.chain is not None
    assert b.state.chain.priority == 21
    d.reconciler.others_watched = True
    d.reconcile()  # reads once more, then keeps it
    b.others = [30]
    d.status.links = (LAN0,)
    d.reconcile()
    assert b.state.chain.priority == 21, "a device change re-read the other chains"
    d.reconciler.others_changed()
    d.reconcile()
    assert b.state.chain is not None and b.state.chain.priority == 31


def test_verify_mismatch_is_a_failure_with_a_diff(tmp_path: Path) -> None:
    d, b = _daemon(tmp_path)
    d.status.links = (LAN0,)
    b.corrupt_reads = True
    with pytest.raises(VerifyError, match="flowtable ft"):
        d.reconcile()
    assert d.status.reconcile_failures_total == 1
    assert "differs after apply" in d.status.last_error


def test_bad_reload_is_refused_and_running_config_kept(tmp_path: Path) -> None:
    d, _b = _daemon(tmp_path)
    before = d.config
    (tmp_path / "offloadd.toml").write_text(CONFIG.replace('"ft"', '"ft"\nbogus = 1'))
    assert d.reload() is False
    assert d.config is before
    assert d.status.reloads_rejected_total == 1
    (tmp_path / "offloadd.toml").write_text(CONFIG.replace('"lan*", ', ""))
    assert d.reload() is True
    d.status.links = (LAN0, WAN0)
    d.reconcile()
    assert d.backend.read().flowtable("ft").devices == {"wan0"}  # type: ignore[union-attr]


def test_reload_cannot_move_table(tmp_path: Path) -> None:
    d, _b = _daemon(tmp_path)
    (tmp_path / "offloadd.toml").write_text(CONFIG.replace('table = "offloadd"',
                                                           'table = "other"'))
    assert d.reload() is False


def test_teardown_removes_table_unless_keep(tmp_path: Path) -> None:
    d, b = _daemon(tmp_path)
    d.reconcile()
    d.teardown()
    assert b.state is None
    d2, b2 = _daemon(tmp_path, CONFIG.replace('table = "offloadd"',
                                              'table = "offloadd"\non_exit = "keep"'))
    d2.reconcile()
    d2.teardown()
    assert b2.state is not None


def test_restart_adopts_existing_table(tmp_path: Path) -> None:
    d, b = _daemon(tmp_path)
    d.status.links = (LAN0, WAN0)
    d.reconcile()
    d2, _ = _daemon(tmp_path, backend=b)
    d2.status.links = (LAN0, WAN0)
    assert d2.reconcile().is_empty


def test_loop_follows_snapshots_and_retries_vanished_device(tmp_path: Path) -> None:
    async def scenario() -> None:
        d, b = _on_loop(tmp_path)
        links = d.link_source
        assert isinstance(links, FakeLinks)
        task = asyncio.create_task(d.run(signals=(), control=False))
        links.push(LAN0, WAN0)
        await asyncio.sleep(0.05)
        assert b.state is not None and b.state.flowtable("ft").devices == {"lan0", "wan0"}  # type: ignore[union-attr]
        b.vanish_next = 1
        links.push(LAN0, WAN0, LAN5)
        await asyncio.sleep(0.05)
        assert b.vanish_next == 0  # refused once: nothing applied
        assert b.state.flowtable("ft").devices == {"lan0", "wan0"}  # type: ignore[union-attr]
        await asyncio.sleep(d.timing.retry_vanished_s)  # re-planned after the retry delay
        assert b.state.flowtable("ft").devices == {"lan0", "wan0", "lan5"}  # type: ignore[union-attr]
        d.request_stop()
        await asyncio.wait_for(task, 2)

    run_virtual(scenario)


def test_the_same_no_such_device_answer_with_no_link_change_backs_off(tmp_path: Path) -> None:
    """An ENOENT that no vanished device explains (the links do not change) is
    retried VANISHED_RETRIES times quickly, then as a failure, not every 0.2 s
    forever (seen once on a slow day: 180 s of "re-planning shortly")."""
    async def scenario() -> None:
        d, b = _on_loop(tmp_path)
        links = d.link_source
        assert isinstance(links, FakeLinks)
        b.vanish_next = 1000
        task = asyncio.create_task(d.run(signals=(), control=False))
        links.push(LAN0, WAN0)
        await asyncio.sleep(VANISHED_RETRIES * d.timing.retry_vanished_s + 1.0)
        tries = 1000 - b.vanish_next
        assert tries == VANISHED_RETRIES, tries
        assert any("no link change" in e for e in d.status.recent_errors)
        # A link change is a new race: quick retries again, and success once
        # the kernel takes the batch.
        b.vanish_next = 0
        links.push(LAN0, WAN0, LAN5)
        await asyncio.sleep(0.3)
        assert b.state is not None
        assert b.state.flowtable("ft").devices == {"lan0", "wan0", "lan5"}  # type: ignore[union-attr]
        d.request_stop()
        await asyncio.wait_for(task, 2)

    run_virtual(scenario)


class RecordingNotify:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def ready(self, status: str) -> None:
        self.calls.append("ready")

    def status(self, text: str) -> None:
        self.calls.append("status")

    def reloading(self) -> None:
        self.calls.append("reloading")

    def stopping(self) -> None:
        self.calls.append("stopping")

    async def run_watchdog(self) -> None:
        self.calls.append("watchdog")


def test_loop_tells_systemd_ready_reloading_and_stopping(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        path = tmp_path / "offloadd.toml"
        path.write_text(CONFIG)
        links = FakeLinks()
        notify = RecordingNotify()
        d = Daemon(path, parse_config(CONFIG), FakeBackend(), links=links, notify=notify,
                   clock=asyncio.get_running_loop().time)
        task = asyncio.create_task(d.run(signals=(), control=False))
        await asyncio.sleep(0.02)
        assert "ready" not in notify.calls  # not before the first reconcile
        links.push(LAN0)
        await asyncio.sleep(0.05)
        path.write_text("bogus")  # a refused reload must still end in READY
        d.request_reload()
        await asyncio.sleep(0.05)
        d.request_stop()
        await asyncio.wait_for(task, 2)
        return notify.calls

    calls = run_virtual(scenario)
    assert calls[0] == "watchdog"
    assert calls[1] == "ready"
    i = calls.index("reloading")
    assert "ready" in calls[i:] and calls[-1] == "stopping"


BAD = Link(7, "lan7", "veth")


def _attached(b: FakeBackend) -> set[str]:
    assert b.state is not None
    ft = b.state.flowtable("ft")
    assert ft is not None
    return set(ft.devices)


def test_a_device_the_kernel_refuses_is_left_out_and_the_rest_applied(tmp_path: Path) -> None:
    d, b = _daemon(tmp_path, backend=FakeBackend(refuse={"lan7": "Operation not supported"}))
    d.status.links = (LAN0, WAN0)
    d.reconcile()
    d.status.links = (LAN0, WAN0, LAN5, BAD)
    d.reconcile()  # no exception: lan5 joins, lan7 is reported
    assert _attached(b) == {"lan0", "wan0", "lan5"}
    assert b.state is not None and b.state.set("ft_ifs") is not None
    assert b.state.set("ft_ifs").elements == {"lan0", "wan0", "lan5"}  # type: ignore[union-attr]
    assert d.status.desired is not None
    (why,) = [x.reason for x in d.status.desired.decisions if x.device == "lan7"]
    assert "kernel refused to attach lan7: Operation not supported" in why
    assert any("refused to attach lan7" in e for e in d.status.recent_errors)
    assert d.reconcile().is_empty  # left out from now on, no retry storm
    checks = b.checks
    d.reconcile()
    assert b.checks == checks


def test_refusal_not_caused_by_a_device_fails_the_pass(tmp_path: Path) -> None:
    d, b = _daemon(tmp_path)
    d.status.links = (LAN0, WAN0)
    d.reconcile()
    b.refuse_all = "Cannot allocate memory"
    d.status.links = (LAN0, WAN0, LAN5)
    with pytest.raises(NftError):
        d.reconcile()
    assert _attached(b) == {"lan0", "wan0"}  # nothing half-applied
    b.refuse_all = ""
    d.reconcile()
    assert _attached(b) == {"lan0", "wan0", "lan5"}  # nobody was blamed for it


def test_refused_device_is_retried_when_recreated_reloaded_or_later(tmp_path: Path) -> None:
    d, b = _daemon(tmp_path, backend=FakeBackend(refuse={"lan7": "Operation not supported"}))
    d.status.links = (LAN0, BAD)
    d.reconcile()
    assert _attached(b) == {"lan0"}
    b.refuse.clear()  # e.g. the driver is fixed
    d.reconcile()
    assert _attached(b) == {"lan0"}  # same link: still left out
    d.status.links = (LAN0, Link(8, "lan7", "veth"))  # re-created: a new index
    d.reconcile()
    assert _attached(b) == {"lan0", "lan7"}

    b.refuse["lan5"] = "Operation not supported"
    d.status.links = (LAN0, Link(8, "lan7", "veth"), LAN5)
    d.reconcile()
    b.refuse.clear()
    assert d.reload()
    d.reconcile()
    assert "lan5" in _attached(b)

    b.refuse["wan0"] = "Operation not supported"
    d.status.links = (LAN0, WAN0)
    d.reconcile()
    b.refuse.clear()
    d.reconciler.refusals.since -= d.reconciler.refusals.retry_s + 1
    d.reconcile()
    assert _attached(b) == {"lan0", "wan0"}


def test_several_refused_devices_are_each_found(tmp_path: Path) -> None:
    many = tuple(Link(100 + i, f"lan{10 + i}", "veth") for i in range(20))
    refuse = {"lan13": "Operation not supported", "lan27": "No buffer space available"}
    d, b = _daemon(tmp_path, backend=FakeBackend(refuse=refuse))
    d.status.links = (LAN0, *many)
    d.reconcile()
    assert _attached(b) == {"lan0"} | {m.name for m in many} - set(refuse)
    assert b.checks <= 20  # halving, not one dry run per device


WILD_CONFIG = """
[[flowtable]]
name = "ft"
devices = ["lan0", "wan*"]
"""


def test_with_kernel_wildcards_a_device_the_wildcard_covers_costs_no_transaction(
        tmp_path: Path) -> None:
    d, b = _daemon(tmp_path, WILD_CONFIG, FakeBackend(wildcards=True))
    d.status.hooks = KernelHooks(True, "name hooks", True, "kernel wildcards")
    d.status.links = (LAN0, WAN0)
    d.reconcile()
    assert b.state is not None and b.state.flowtable("ft").devices == {"lan0", "wan*"}  # type: ignore[union-attr]
    d.status.links = (LAN0, WAN0, Link(7, "wan7", "veth"))
    assert d.reconcile().is_empty
    assert d.status.desired is not None
    assert d.status.desired.flowtable_of() == {"lan0": "ft", "wan0": "ft", "wan7": "ft"}
    assert d.status_line().startswith("1 flowtable(s), 3 device(s);")


def test_odd_device_names_are_left_out_once_and_hold_back_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A name that is not UTF-8 (read as "lan\\xff") and one literally "lan*"
    are never sent, so no pass fails or retries over them: one log line each,
    and a device that comes later is attached as usual."""
    d, b = _daemon(tmp_path)
    odd = (Link(7, "lan\\xff", "veth"), Link(8, "lan*", "veth"))
    with caplog.at_level(logging.WARNING, logger="offloadd"):
        d.status.links = (LAN0, *odd)
        d.reconcile()
        assert d.reconcile().is_empty
        d.status.links = (LAN0, LAN5, *odd)
        d.reconcile()
    assert b.state is not None
    assert b.state.flowtable("ft").devices == {"lan0", "lan5"}  # type: ignore[union-attr]
    sent = "".join(render(p, "inet", "offloadd") for p in b.applied)
    assert '"lan*"' not in sent and "\\x" not in sent
    assert d.status.reconcile_failures_total == 0
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert any(line.startswith('flowtable ft: "lan\\xff" cannot be written') for line in lines)
    assert any(line.startswith('flowtable ft: "lan*" cannot be written') for line in lines)


def _gate_sizes(table: TableState | None) -> set[int]:
    assert table is not None
    return {s.size for s in table.sets if s.kind is SetKind.PASSED}


def _gate_line(d: Daemon, b: FakeBackend) -> str:
    text = format_status(status_report(d.status, "offloadd", "inet", b.state))
    return next(line for line in text.splitlines() if line.startswith("gate: "))


def test_the_gate_follows_the_conntrack_limit(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Each pass reads nf_conntrack_max: raised, the gate's sets are re-created
    at twice it (logged once, the flowtable untouched); lowered, they are kept."""
    d, b = _daemon(tmp_path, backend=FakeBackend(conntrack_max=262144))
    d.status.links = (LAN0, WAN0)
    with caplog.at_level(logging.INFO, logger="offloadd"):
        d.reconcile()
    assert _gate_sizes(b.state) == {PASSED_SIZE} and d.status.gate_size == PASSED_SIZE
    assert ("gate sets created at size 1048576 (the minimum; 2 x nf_conntrack_max 262144 "
            "is less)") in caplog.messages
    assert _gate_line(d, b) == ("gate: 2 sets of up to 1048576 flows (the minimum; "
                                "2 x nf_conntrack_max 262144 is less)")

    caplog.clear()
    b.conntrack_max = 4_194_304
    with caplog.at_level(logging.INFO, logger="offloadd"):
        plan = d.reconcile()
        assert d.reconcile().is_empty
    assert not any(isinstance(op, DeleteFlowtable) for op in plan.ops)
    assert [op for op in plan.ops if isinstance(op, DeleteSet | CreateSet)] == [
        DeleteSet("passed_original"), DeleteSet("passed_reply"),
        CreateSet("passed_original", SetKind.PASSED, 8_388_608),
        CreateSet("passed_reply", SetKind.PASSED, 8_388_608)]
    assert _gate_sizes(b.state) == {8_388_608} and d.status.gate_size == 8_388_608
    gate = [m for m in caplog.messages if m.startswith("gate ")]
    assert gate == ["gate sets re-created at size 8388608 (2 x nf_conntrack_max 4194304)"]
    assert _gate_line(d, b) == "gate: 2 sets of up to 8388608 flows (2 x nf_conntrack_max 4194304)"
    report = status_report(d.status, "offloadd", "inet", b.state)
    assert report["gate"] == {"sets": 2, "size": 8_388_608, "desired_size": 8_388_608,
                              "conntrack_max": 4_194_304, "fill": None}  # not counted yet

    b.conntrack_max = None  # unreadable: the default wanted, the larger sets kept
    assert d.reconcile().is_empty
    assert _gate_sizes(b.state) == {8_388_608} and d.status.gate_size == 8_388_608
    assert _gate_line(d, b) == ("gate: 2 sets of up to 8388608 flows (kept as found, larger "
                                "than offloadd's 1048576: the minimum; nf_conntrack_max "
                                "unreadable)")


def test_a_gate_made_larger_by_hand_is_kept(tmp_path: Path) -> None:
    d, b = _daemon(tmp_path, backend=FakeBackend(conntrack_max=1_048_576))
    d.status.links = (LAN0, WAN0)
    d.reconcile()
    assert _gate_sizes(b.state) == {2_097_152}
    assert b.state is not None
    b.state = replace(b.state, sets=tuple(
        replace(s, size=16_777_216) if s.kind is SetKind.PASSED else s for s in b.state.sets))
    assert d.reconcile().is_empty  # no verify mismatch, nothing re-created
    assert d.status.gate_size == 16_777_216 and d.status.reconcile_failures_total == 0


def test_one_gate_set_made_smaller_by_hand_is_re_created_alone(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d, b = _daemon(tmp_path)
    d.status.links = (LAN0, WAN0)
    d.reconcile()
    assert b.state is not None
    b.state = replace(b.state, sets=tuple(
        replace(s, size=65536) if s.name == "passed_reply" else s for s in b.state.sets))
    assert d.status.gate_size == PASSED_SIZE
    with caplog.at_level(logging.INFO, logger="offloadd"):
        plan = d.reconcile()
    assert [op for op in plan.ops if isinstance(op, CreateSet)] == [
        CreateSet("passed_reply", SetKind.PASSED, PASSED_SIZE)]
    assert ("gate set passed_reply re-created at size 1048576 (the minimum; "
            "nf_conntrack_max unreadable)") in caplog.messages
    assert _gate_sizes(b.state) == {PASSED_SIZE}


def test_no_gate_no_gate_line() -> None:
    assert format_gate(None) == []
    assert format_gate({"sets": 0, "size": 0, "desired_size": 0, "conntrack_max": 1}) == []


async def _until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def _running(tmp_path: Path,
                   check_interval: int) -> AsyncIterator[tuple[Daemon, FakeBackend]]:
    """A daemon with daemon.check_interval, running on lan0 and wan0."""
    d, b = _on_loop(tmp_path, CONFIG.replace(
        "[daemon]\n", f"[daemon]\ncheck_interval = {check_interval}\n"))
    links = d.link_source
    assert isinstance(links, FakeLinks)
    task = asyncio.create_task(d.run(signals=(), control=False))
    links.push(LAN0, WAN0)
    await _until(lambda: b.state is not None)
    yield d, b
    d.request_stop()
    await asyncio.wait_for(task, 2)


def test_the_periodic_check_repairs_drift_no_event_announced(tmp_path: Path) -> None:
    """daemon.check_interval: a table deleted behind offloadd's back, with no
    event saying so, comes back at the next check, which counts it as drift;
    a plan made because the links moved is no drift."""
    async def scenario() -> None:
        async with _running(tmp_path, 1) as (d, b):
            checks = d.status.reconciles_total
            await _until(lambda: d.status.reconciles_total >= checks + 2)  # two quiet checks
            assert d.status.drift_repairs_total == 0 and d.status.transactions_total == 1
            b.state = None  # `nft delete table inet offloadd`, its event lost
            await _until(lambda: b.state is not None)
            assert d.status.drift_repairs_total == 1
            assert d.status.last_drift is not None
            assert "CreateTable" in d.status.last_drift["operations"]  # type: ignore[operator]
            assert isinstance(d.link_source, FakeLinks)
            d.link_source.push(LAN0, WAN0, LAN5)
            await _until(lambda: d.status.reconciles_total >= checks + 6)
            assert d.status.drift_repairs_total == 1

    run_virtual(scenario)


def test_a_repairs_read_that_finds_the_table_gone_counts_drift(tmp_path: Path) -> None:
    """A deleted table frees its flows, and the repair may see that before the
    periodic check: the pass its read wakes heals the table and counts the
    unannounced change as drift, said to be found by that read."""
    async def scenario() -> None:
        async with _running(tmp_path, 0) as (d, b):
            b.state = None  # deleted, its event lost
            d.writer.request_reconcile("a repair waits for offloadd's table to be in its "
                                       "desired state")
            await _until(lambda: b.state is not None)
            assert d.status.drift_repairs_total == 1
            assert d.status.last_drift is not None
            assert d.status.last_drift["found_by"] == "a repair's or re-validation's read"
            line = format_check(status_report(d.status, "offloadd", "inet", b.state,
                                              check_interval=0)["reconcile"])
            assert "found by a repair's or re-validation's read): an event was missed" in line, line

    run_virtual(scenario)


def test_a_failed_write_of_its_own_is_no_drift(tmp_path: Path) -> None:
    """A repair step the kernel refused wakes a reconcile too; what that pass
    puts back is offloadd's own half-done work, not a change no event
    announced: no drift."""
    async def scenario() -> None:
        async with _running(tmp_path, 0) as (d, b):
            passes = d.status.reconciles_total
            b.state = None  # what its own first step left, say
            b.refuse_all = "Device or resource busy"
            with pytest.raises(NftError):
                d.writer.apply(teardown_plan("offloadd", "inet"), "repair step")
            b.refuse_all = ""
            await _until(lambda: b.state is not None and d.status.reconciles_total > passes)
            assert d.status.drift_repairs_total == 0

    run_virtual(scenario)


def test_a_checks_failed_pass_hands_its_compare_on_and_its_retry_is_dropped_once_healed(
        tmp_path: Path) -> None:
    """A periodic check whose read-back met a table deleted after its read
    (its event lost) fails; the pass that heals it compares in its place and
    counts the drift. The failed pass's retry, due later, is dropped once a
    pass succeeded: woken for nothing, it would have healed a table deleted
    after that without comparing, and no drift would have been counted (seen
    in CI on 7.3.4)."""
    async def go() -> None:
        d, b = _on_loop(tmp_path)
        d.status.links = (LAN0, WAN0)
        d._pass()
        assert b.state is not None and d.status.reconciles_total == 1
        b.delete_table_at_read = 2  # the check's read sees it, its read-back does not
        d._check_due = True
        d._pass()
        assert d.status.reconcile_failures_total == 1 and d.status.drift_repairs_total == 0
        d._wake.clear()
        d._pass()  # woken before the retry (by a check, a link, anything)
        assert b.state is not None and d.status.drift_repairs_total == 1
        assert d.status.last_drift is not None
        assert d.status.last_drift["found_by"] == "periodic check"
        await asyncio.sleep(d.timing.retry_failed_s * 2)
        assert not d._wake.is_set()  # no retry left to wake a pass that does not compare
        b.state = None  # deleted again, its event lost
        d._check_due = True
        d._pass()
        assert b.state is not None and d.status.drift_repairs_total == 2

    run_virtual(go)


class _Changes:
    """nf_tables change batches, as the test hands them over."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[NftChanges] = asyncio.Queue()

    async def changes(self) -> AsyncIterator[NftChanges]:
        while True:
            yield await self.queue.get()


def test_a_change_an_event_announced_is_no_drift(tmp_path: Path) -> None:
    """Someone deleting offloadd's table with its event delivered: the table
    comes back, and even a periodic check that runs first counts no drift."""
    async def scenario() -> None:
        d, b = _on_loop(tmp_path, CONFIG.replace("[daemon]\n", "[daemon]\ncheck_interval = 1\n"))
        source = _Changes()
        d._nft_changes = source
        task = asyncio.create_task(d.run(signals=(), control=False))
        assert isinstance(d.link_source, FakeLinks)
        d.link_source.push(LAN0, WAN0)
        await _until(lambda: b.state is not None)
        passes = d.status.reconciles_total
        d._check_due = True  # the check is due as the event arrives
        b.state = None
        source.queue.put_nowait(NftChanges((Transaction(
            (TableChange(ObjectKind.TABLE, Verb.DELETE, "inet", "offloadd"),), 77, "nft"),)))
        await _until(lambda: b.state is not None and d.status.reconciles_total > passes)
        await _until(lambda: d.status.reconciles_total >= passes + 3)  # and checks after it
        assert d.status.drift_repairs_total == 0
        d.request_stop()
        await asyncio.wait_for(task, 2)

    run_virtual(scenario)


def test_check_interval_zero_runs_no_periodic_pass(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _running(tmp_path, 0) as (d, b):
            passes = d.status.reconciles_total
            b.state = None
            # Past the look at the setting (check_off_poll_s), not only a second.
            await asyncio.sleep(2 * d.timing.check_off_poll_s + 1.5)
            assert d.status.reconciles_total == passes and b.state is None

    run_virtual(scenario)


def test_status_says_what_the_periodic_check_found() -> None:
    assert format_check({"check_interval_seconds": 60, "drift_repairs_total": 0}) == (
        "periodic check: every 60 s; no drift found")
    assert format_check({"check_interval_seconds": 0}) == "periodic check: off; no drift found"
    line = format_check({"check_interval_seconds": 60, "drift_repairs_total": 2,
                         "last_drift": {"time": 0, "operations": ["CreateTable"]}})
    assert line.startswith("periodic check: every 60 s; drift repaired 2 time(s), last ")
    assert line.endswith("(CreateTable): an event was missed")


def test_teardown_is_a_write_of_the_one_writer(tmp_path: Path) -> None:
    """Removing the table at exit goes through the writer that serialises and
    counts every other write; with no table there is nothing to write."""
    d, b = _daemon(tmp_path)
    d.status.links = (LAN0,)
    d.reconcile()
    before = d.status.writes.transactions_total
    d.teardown()
    assert b.state is None and d.status.writes.transactions_total == before + 1
    d.teardown()
    assert d.status.writes.transactions_total == before + 1


def test_a_table_created_after_the_change_needs_no_re_validation(tmp_path: Path) -> None:
    """`flush ruleset` with the admin's new rules in the same transaction:
    offloadd's table comes back fresh, every flow in it passes the chains as
    they are now, so replacing its flowtables again would only cost each
    flow another slow-path round (and the 1 s it is measured by). A change
    after the table is back is re-validated as ever."""
    async def scenario() -> None:
        d, b = _on_loop(tmp_path)
        source = _Changes()
        d._nft_changes = source
        task = asyncio.create_task(d.run(signals=(), control=False))
        assert isinstance(d.link_source, FakeLinks)
        d.link_source.push(LAN0, WAN0)
        await _until(lambda: b.state is not None)
        rv = d.status.revalidation
        b.state = None  # what the flush did to offloadd's table
        source.queue.put_nowait(NftChanges((Transaction(
            (TableChange(ObjectKind.TABLE, Verb.DELETE, "inet", "offloadd"),
             TableChange(ObjectKind.TABLE, Verb.DELETE, "inet", "admin"),
             TableChange(ObjectKind.RULE, Verb.ADD, "inet", "admin")), 77, "nft"),)))
        await _until(lambda: b.state is not None and rv.moot_total == 1, timeout=30)
        assert rv.revalidations_total == 0 and rv.policy_changes_total == 1
        # A rule added to the admin's forward chain, after the table is back.
        b.hooks[("inet", "admin")] = frozenset({"forward"})
        source.queue.put_nowait(NftChanges((Transaction(
            (TableChange(ObjectKind.CHAIN, Verb.ADD, "inet", "admin"),
             TableChange(ObjectKind.RULE, Verb.ADD, "inet", "admin")), 78, "nft"),)))
        await _until(lambda: rv.revalidations_total == 1, timeout=30)
        assert rv.moot_total == 1
        text = format_status(status_report(d.status, "offloadd", "inet", b.state))
        assert "1 moot (offloadd's table created after the change" in text, text
        d.request_stop()
        await asyncio.wait_for(task, 2)

    run_virtual(scenario)
