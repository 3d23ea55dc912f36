"""Supervised tasks and the one writer: a task that stops comes back (with
backoff, shown in status and metrics), and a write that fails anywhere asks
for the reconcile that repairs it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from offloadd.cli.format import format_tasks
from offloadd.core.configparse import parse_config
from offloadd.core.errors import KernelError, NftError, OffloaddError
from offloadd.core.model import Link, TableState
from offloadd.core.plan import Plan
from offloadd.core.repair import HeldEntry, Scan
from offloadd.core.revalidate import NftChanges, ObjectKind, TableChange, Transaction, Verb
from offloadd.kernel.faults import Faults, FaultyNftEvents
from offloadd.kernel.links import WatcherStats
from offloadd.kernel.nft import parse_json_listing
from offloadd.service.daemon import Daemon
from offloadd.service.metrics import StatusView
from offloadd.service.report import status_report
from offloadd.service.supervisor import Backoff, Steps, Supervisor, TaskState
from offloadd.service.timing import Timing
from tests.unit.fakes import FakeBackend, FakeLinks
from tests.unit.test_metrics import scrape_view
from tests.unit.virtualtime import run_virtual

CONFIG = '[[flowtable]]\nname = "ft"\ndevices = ["lan*", "wan*"]\n'


# -- backoff ---------------------------------------------------------------------------

def test_backoff_doubles_to_its_cap_and_starts_over_after_a_healthy_run() -> None:
    b = Backoff(first_s=1.0, max_s=8.0, healthy_s=60.0)
    delays = []
    for _ in range(6):
        b = b.after_failure(ran_s=0.1)
        delays.append(b.current_s)
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert b.after_failure(ran_s=61.0).current_s == 1.0


# -- the supervisor --------------------------------------------------------------------

def test_a_failing_task_is_restarted_with_backoff_and_its_state_shows_it() -> None:
    slept: list[float] = []
    calls: list[bool] = []
    failures: list[tuple[str, str]] = []
    seen_down: list[bool] = []

    async def go() -> Mapping[str, object]:
        async def fake_sleep(delay: float) -> None:
            slept.append(delay)
            seen_down.append(not sup.states["watch"].up)

        sup = Supervisor(sleep=fake_sleep, on_failure=lambda n, w: failures.append((n, w)))

        async def task(restarted: bool) -> None:
            calls.append(restarted)
            if len(calls) <= 2:
                raise KernelError(0, f"boom {len(calls)}")
            if len(calls) == 3:
                raise ValueError("a bug")
            await asyncio.Event().wait()  # runs until cancelled

        sup.start("watch", task)
        for _ in range(50):
            await asyncio.sleep(0)
        states = dict(sup.states)
        await sup.stop()
        assert not sup.states["watch"].up
        return states

    states = asyncio.run(go())
    assert calls == [False, True, True, True]
    assert slept == [1.0, 2.0, 4.0] and all(seen_down)
    st = states["watch"]
    assert st.up is True and st.restarts_total == 3  # type: ignore[attr-defined]
    assert st.last_error == "ValueError: a bug"  # type: ignore[attr-defined]
    assert [n for n, _ in failures] == ["watch"] * 3 and "boom 1" in failures[0][1]


def test_status_and_the_tasks_line_name_a_task_that_is_down() -> None:
    tasks = {"nft-changes": {"up": False, "restarts_total": 2, "last_error": "boom",
                             "last_error_time": 1.0, "restart_in_seconds": 4.0},
             "repair": {"up": True, "restarts_total": 0, "last_error": "",
                        "last_error_time": 0.0, "restart_in_seconds": 0.0}}
    line = format_tasks(tasks)
    assert line.startswith("tasks: 1/2 running; DOWN: nft-changes")
    assert "nft-changes 2x (last: boom)" in line and "repair" not in line.split("DOWN")[1]


# -- a task that hangs without ending -----------------------------------------------------

class HangingScan:
    """A left-behind scan that never returns until released (a kernel dump stuck)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def scan(self, _flowtable_of: Mapping[str, str]) -> Scan:
        self.entered.set()
        self.release.wait(30)
        return Scan(at=time.monotonic())


def test_a_task_stuck_in_a_kernel_dump_shows_stalled_in_status_and_metrics(
        tmp_path: Path) -> None:
    # The repair task is up (it never ended), but its scan has not returned
    # for longer than Timing.task_stall_s: status and metrics say so; once the
    # scan returns, it is no longer stalled.
    now = [1000.0]
    scan = HangingScan()
    seen: dict[str, object] = {}

    async def go() -> None:
        d, b = _daemon(tmp_path, left_behind=scan, clock=lambda: now[0])
        assert d.repairer is not None
        repairer = d.repairer
        d.supervisor.start("repair", lambda _r: repairer.check())
        await asyncio.get_running_loop().run_in_executor(None, scan.entered.wait, 10)
        now[0] += 200
        seen["early"] = d.supervisor.states["repair"]
        now[0] += d.timing.task_stall_s
        st = d.supervisor.states["repair"]
        seen["late"] = st
        report = status_report(d.status, "offloadd", "inet", b.state)
        seen["line"] = format_tasks(report["tasks"])
        view = StatusView(d.status, lambda: b.state, WatcherStats())
        seen["metrics"] = [ln for ln in scrape_view(view).splitlines()
                           if ln.startswith("offloadd_task_stalled")]
        scan.release.set()
        while d.status.repair.checks_total == 0:
            await asyncio.sleep(0.01)
        seen["after"] = d.supervisor.states["repair"]
        await d.supervisor.stop()

    asyncio.run(go())
    early, late, after = seen["early"], seen["late"], seen["after"]
    assert isinstance(early, TaskState) and early.up and not early.stalled
    assert isinstance(late, TaskState) and late.up and late.stalled
    assert late.step_s == pytest.approx(200 + Timing().task_stall_s)
    assert "STALLED: repair (one step for 500 s)" in str(seen["line"])
    assert seen["metrics"] == ['offloadd_task_stalled{task="repair"} 1.0']
    assert isinstance(after, TaskState) and not after.stalled and after.step_s == 0.0


# -- the daemon's nf_tables watcher, supervised ----------------------------------------------

def _daemon(tmp_path: Path, **kw: object) -> tuple[Daemon, FakeBackend]:
    path = tmp_path / "offloadd.toml"
    path.write_text(CONFIG)
    b = FakeBackend()
    d = Daemon(path, parse_config(CONFIG), b, links=FakeLinks(), **kw)  # type: ignore[arg-type]
    d.status.links = (Link(1, "lan0", "veth"), Link(2, "wan0", "veth"))
    d.reconcile()
    return d, b


RULE = Transaction((TableChange(ObjectKind.RULE, Verb.ADD, "inet", "admin"),), 77, "nft")


class DiesOnce:
    """A change stream that dies after its first batch, and then watches again."""

    def __init__(self) -> None:
        self.opened = 0

    async def changes(self) -> AsyncIterator[NftChanges]:
        self.opened += 1
        yield NftChanges(())  # subscribed
        if self.opened == 1:
            raise KernelError(105, "nftables change watch: No buffer space available")
        await asyncio.Event().wait()


def test_a_watcher_that_died_comes_back_and_revalidates_what_it_may_have_missed(
        tmp_path: Path) -> None:
    source = DiesOnce()

    async def go() -> tuple[Daemon, FakeBackend]:
        d, b = _daemon(tmp_path, nft_changes=source, clock=asyncio.get_running_loop().time)
        b.hooks = {("inet", "admin"): frozenset({"forward"})}
        d.supervisor.start("nft-changes", d._consume_nft_changes)
        # Restarted after restart_first_s, on virtual time.
        await asyncio.sleep(d.timing.restart_first_s + 0.01)
        assert source.opened == 2 and d.revalidator._schedule.pending is not None
        assert d.reconciler.others_watched  # running again
        await d.supervisor.stop()
        return d, b

    d, b = run_virtual(go)
    assert source.opened == 2
    pending = d.revalidator._schedule.pending
    assert pending is not None and pending.triggers == (
        "the nftables change watcher restarted (changes while it was down are unknown)",)
    tasks = status_report(d.status, "offloadd", "inet", b.state)["tasks"]
    assert tasks["nft-changes"]["restarts_total"] == 1
    assert "No buffer space" in tasks["nft-changes"]["last_error"]
    assert "task nft-changes stopped" in d.status.last_error


def test_a_watcher_that_fails_to_open_again_and_again_revalidates_nothing(
        tmp_path: Path) -> None:
    class NeverOpens:
        async def changes(self) -> AsyncIterator[NftChanges]:
            raise KernelError(1, "cannot watch nftables changes: Operation not permitted")
            yield NftChanges(())  # pragma: no cover (an async generator)

    async def go() -> Daemon:
        d, _b = _daemon(tmp_path, nft_changes=NeverOpens(),
                        timing=Timing(restart_first_s=0.001, restart_max_s=0.004),
                        clock=asyncio.get_running_loop().time)
        d.supervisor.start("nft-changes", d._consume_nft_changes)
        await asyncio.sleep(0.1)
        await d.supervisor.stop()
        return d

    d = run_virtual(go)
    st = d.supervisor.states["nft-changes"]
    # On virtual time: after 1, 2, then every 4 ms, up to 0.1 s.
    assert st.restarts_total == 2 + int((0.1 - 0.003) / 0.004) and not st.up
    assert d.revalidator._schedule.pending is None  # no re-validation storm
    assert d.status.revalidation.revalidations_total == 0


# -- the one writer ----------------------------------------------------------------------

@dataclass
class FailsAt(FakeBackend):
    """Refuses the applies whose number (1-based, from now on) is in ``at``."""

    at: set[int] = field(default_factory=set)
    count: int = 0

    def apply(self, plan: Plan) -> str:
        self.count += 1
        if self.count in self.at:
            raise NftError("nft refused the transaction: Device or resource busy")
        return super().apply(plan)


@dataclass
class HeldOnce:
    """A left-behind scan that finds three entries once, then none."""

    scans: list[Mapping[str, frozenset[int]]] = field(
        default_factory=lambda: [{"ft": frozenset({1, 2, 3})}])

    def scan(self, flowtable_of: Mapping[str, str]) -> Scan:
        found = self.scans.pop(0) if self.scans else {}
        return Scan(at=time.monotonic(), held={i: HeldEntry(86392, ft)
                                               for ft, ids in found.items() for i in ids})


def test_a_repair_whose_second_step_fails_asks_for_the_reconcile_that_restores_the_rule(
        tmp_path: Path) -> None:
    path = tmp_path / "offloadd.toml"
    path.write_text(CONFIG)
    b = FailsAt()

    async def go() -> tuple[Daemon, TableState, int]:
        d = Daemon(path, parse_config(CONFIG), b, links=FakeLinks(), left_behind=HeldOnce(),
                   timing=Timing(repair_release_max_s=0.3), clock=asyncio.get_running_loop().time)
        d.status.links = (Link(1, "lan0", "veth"), Link(2, "wan0", "veth"))
        d.reconcile()
        desired = d.status.desired
        assert desired is not None and b.state == desired.table
        transactions = d.status.transactions_total
        b.count, b.at = 0, {2}  # the release goes through, putting the rules back fails
        assert d.repairer is not None
        await d.repairer.check()
        return d, desired.table, transactions

    d, desired_table, transactions = run_virtual(go)
    assert b.state != desired_table  # the chain lacks its offload rule
    assert d.status.repair.repairs_total == 0 and "repair failed" in d.status.last_error
    assert d.status.writes.failures_total == 1
    assert d.status.writes.reconciles_requested_total == 1
    assert d._wake.is_set()  # the loop's next pass is that reconcile
    d._wake.clear()
    d._pass()
    assert b.state == desired_table
    # release + the reconcile's repair; the refused step is no transaction
    assert d.status.transactions_total == transactions + 2


def test_a_revalidation_out_of_sync_asks_for_a_reconcile_and_says_so_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d, b = _daemon(tmp_path)
    assert b.state is not None
    # Someone deleted offloadd's chain along with their change, and its
    # event was lost.
    b.state = replace(b.state, chain=None)
    d.revalidator.changed("1 rule added in inet admin by nft[77]")
    with caplog.at_level("INFO", logger="offloadd"):
        assert not d.revalidator.revalidate()
        assert not d.revalidator.revalidate()
    assert d._wake.is_set() and d.status.revalidation.waited_total == 1
    assert d.status.writes.reconciles_requested_total == 2
    assert sum("waits for a reconcile" in r.message for r in caplog.records) == 1
    d._wake.clear()
    d._pass()
    assert d.revalidator.revalidate() and d.status.revalidation.revalidations_total == 1
    rep = status_report(d.status, "offloadd", "inet", b.state)
    assert rep["revalidate"]["waited_total"] == 1


def test_a_revalidation_whose_table_came_back_new_is_moot(tmp_path: Path) -> None:
    """`nft flush ruleset` with its event lost: the reconcile the waiting
    re-validation asks for creates the table anew, after the change; every
    flow in it passes the current policy, so nothing is replaced."""
    d, b = _daemon(tmp_path)
    b.state = None
    d.revalidator.changed("1 rule added in inet admin by nft[77]")
    assert not d.revalidator.revalidate()
    d._pass()
    tx = d.status.writes.transactions_total
    assert not d.revalidator.revalidate()
    assert d.status.revalidation.moot_total == 1 and d.status.revalidation.revalidations_total == 0
    assert d.status.writes.transactions_total == tx and d.revalidator.due_at() is None


def test_a_request_does_not_cut_short_a_failed_reconciles_backoff(tmp_path: Path) -> None:
    d, b = _daemon(tmp_path)
    b.refuse_all = "Device or resource busy"
    b.state = None

    async def go() -> None:
        assert d._safe_reconcile() is None  # failed: retried in RETRY_FAILED_S
        d._wake.clear()
        d.writer.request_reconcile("a re-validation waits")
        assert not d._wake.is_set()

    asyncio.run(go())
    d._failing_until = 0.0
    d.writer.request_reconcile("a re-validation waits")
    assert d._wake.is_set()


def test_every_write_is_counted_once_by_the_writer(tmp_path: Path) -> None:
    d, b = _daemon(tmp_path)
    assert d.status.transactions_total == 1
    d.revalidator.changed("x")
    assert d.revalidator.revalidate()
    assert d.status.transactions_total == 2 == len(b.applied)


def test_errors_from_the_kernels_answers_are_offloadd_errors() -> None:
    with pytest.raises(OffloaddError, match="not JSON"):
        parse_json_listing("table", "{not json")
    with pytest.raises(OffloaddError, match="'nftables' array"):
        parse_json_listing("table", '{"x": 1}')


# -- the lab's fault injection ------------------------------------------------------------

def test_a_fault_named_in_the_file_is_taken_as_often_as_it_says(tmp_path: Path) -> None:
    path = tmp_path / "faults"
    faults = Faults(path)
    assert not faults.take("garbage-read")  # no file: no fault
    path.write_text("garbage-read 2\nnft-watch 1\n")
    assert [faults.take("garbage-read") for _ in range(3)] == [True, True, False]
    assert faults.take("nft-watch") and not faults.take("nft-watch")
    assert not faults.take("fail-chain-replace")


def test_the_faulty_watcher_fails_on_a_batch_with_changes_only(tmp_path: Path) -> None:
    path = tmp_path / "faults"

    class Inner:
        async def changes(self) -> AsyncIterator[NftChanges]:
            yield NftChanges(())
            path.write_text("nft-watch 1\n")
            yield NftChanges(())
            yield NftChanges((RULE,))

    async def go() -> list[NftChanges]:
        got = []
        with pytest.raises(KernelError, match="injected fault"):
            async for b in FaultyNftEvents(Inner(), Faults(path)).changes():  # type: ignore[arg-type]
                got.append(b)
        return got

    assert asyncio.run(go()) == [NftChanges(()), NftChanges(())]


def test_a_step_that_progresses_is_not_stalled_and_an_ended_one_stays_ended() -> None:
    """A paced gate count on a full gate runs for minutes, a datagram at a
    time: each one restarts its step's age; progress after the step ended
    (a late worker) brings nothing back."""
    now = [0.0]
    steps = Steps(clock=lambda: now[0])
    with steps.running("gate-count"):
        now[0] = 250.0
        steps.progressed("gate-count")
        now[0] = 400.0
        assert steps.ages() == {"gate-count": 150.0}
    steps.progressed("gate-count")
    assert steps.ages() == {}
