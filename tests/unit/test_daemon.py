"""The reconcile loop against in-memory fakes: minimal changes, verify, reload."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from offloadd.config import parse_config
from offloadd.daemon import Daemon
from offloadd.errors import VerifyError
from offloadd.model import Link
from offloadd.plan import AddFlowtableDevices, AddSetElements, CreateTable
from tests.unit.fakes import FakeBackend, FakeLinks

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


def _daemon(tmp_path: Path, text: str = CONFIG,
            backend: FakeBackend | None = None) -> tuple[Daemon, FakeBackend]:
    path = tmp_path / "offloadd.toml"
    path.write_text(text)
    b = backend or FakeBackend()
    return Daemon(path, parse_config(text), b, links=FakeLinks()), b


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
        d, b = _daemon(tmp_path)
        links = d.link_source
        assert isinstance(links, FakeLinks)
        task = asyncio.create_task(d.run(signals=(), control=False))
        links.push(LAN0, WAN0)
        await asyncio.sleep(0.05)
        assert b.state is not None and b.state.flowtable("ft").devices == {"lan0", "wan0"}  # type: ignore[union-attr]
        b.vanish_next = 1
        links.push(LAN0, WAN0, LAN5)
        await asyncio.sleep(0.5)  # refused once, re-planned after the retry delay
        assert b.state.flowtable("ft").devices == {"lan0", "wan0", "lan5"}  # type: ignore[union-attr]
        d.request_stop()
        await asyncio.wait_for(task, 2)

    asyncio.run(scenario())


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
        d = Daemon(path, parse_config(CONFIG), FakeBackend(), links=links, notify=notify)
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

    calls = asyncio.run(scenario())
    assert calls[0] == "watchdog"
    assert calls[1] == "ready"
    i = calls.index("reloading")
    assert "ready" in calls[i:] and calls[-1] == "stopping"
