"""The stack guard (offloadd.core.guard, service.stackguard): flows through a
stacked device that go one way only, look after look, refuse its fast path
beneath; and a refused device is then attached as it is (core.model)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from offloadd.cli.format import format_status
from offloadd.core.config import Config, FlowtableConfig, Stack
from offloadd.core.configparse import parse_config
from offloadd.core.errors import ConfigError, KernelError
from offloadd.core.guard import (
    Evidence,
    FlowCounts,
    GuardPolicy,
    GuardState,
    Look,
    evidence,
    judge,
)
from offloadd.core.model import Link, desired_state, set_name
from offloadd.core.repair import Scan
from offloadd.core.stack import PppoeSessions
from offloadd.service.daemon import Daemon
from offloadd.service.report import status_report
from offloadd.service.stackguard import StackGuard
from offloadd.service.status import Status
from tests.unit.fakes import FakeBackend, FakeLinks
from tests.unit.test_stack import GATEWAY, SESSION
from tests.unit.virtualtime import run_virtual

POLICY = GuardPolicy(min_packets=10, min_flows=2, looks=2)


def _look(at: float, *flows: tuple[int, int, int, frozenset[str]]) -> Look:
    return Look(at, {i: FlowCounts(i, o, r, devs) for i, o, r, devs in flows})


PPP = frozenset({"br-lan", "ppp0"})
WG = frozenset({"br-lan", "wg0"})


def test_one_way_flows_and_healthy_ones_per_device() -> None:
    before = _look(0, (1, 100, 100, PPP), (2, 50, 50, PPP), (3, 10, 10, WG), (4, 5, 5, PPP))
    # 1 and 2: originals rise, replies flat (the PPPoE black hole); 3 both
    # ways; 4 quiet; 5 new (no earlier look: not judged).
    now = _look(5, (1, 150, 100, PPP), (2, 100, 50, PPP), (3, 20, 19, WG), (4, 5, 5, PPP),
                (5, 90, 0, PPP))
    found = evidence(before, now, {"ppp0", "br-lan", "wg0"}, POLICY)
    assert found["ppp0"] == Evidence(one_way=2, both_ways=0, idle=1, family=4)
    assert found["ppp0"].suspect
    # br-lan carries the healthy WireGuard flow too: not suspect.
    assert found["br-lan"] == Evidence(one_way=2, both_ways=1, idle=1)
    assert not found["br-lan"].suspect
    assert found["wg0"] == Evidence(both_ways=1)


def test_a_path_that_swallows_one_family_only_is_suspect() -> None:
    before = _look(0, (1, 10, 10, PPP), (2, 10, 10, PPP))
    before = Look(0, {**before.flows, 3: FlowCounts(3, 10, 10, PPP, 6),
                      4: FlowCounts(4, 10, 10, PPP, 6)})
    # IPv4 both ways; IPv6 one way only.
    now = Look(5, {1: FlowCounts(1, 30, 30, PPP), 2: FlowCounts(2, 30, 30, PPP),
                   3: FlowCounts(3, 40, 10, PPP, 6), 4: FlowCounts(4, 40, 10, PPP, 6)})
    found = evidence(before, now, {"ppp0"}, POLICY)
    assert found["ppp0"] == Evidence(one_way=2, family=6)
    _, new = judge(GuardState(suspect={"ppp0": 1}), found, POLICY)
    assert "2 offloaded IPv6 flow(s) through ppp0" in new["ppp0"]


def test_few_packets_one_way_is_no_evidence() -> None:
    before = _look(0, (1, 100, 100, PPP), (2, 100, 100, PPP))
    now = _look(5, (1, 105, 100, PPP), (2, 109, 100, PPP))  # < min_packets each
    assert evidence(before, now, {"ppp0"}, POLICY)["ppp0"] == Evidence(idle=2)
    # A counter that went back is another entry under a reused id.
    assert evidence(before, _look(5, (1, 3, 1, PPP)), {"ppp0"}, POLICY)["ppp0"] == Evidence()


def test_a_device_is_refused_after_looks_in_a_row_only() -> None:
    bad = {"ppp0": Evidence(one_way=3), "br-lan": Evidence(one_way=3, both_ways=1)}
    state, new = judge(GuardState(), bad, POLICY)
    assert new == {} and state.suspect == {"ppp0": 1}
    # A healthy look in between starts the count again.
    state, new = judge(state, {"ppp0": Evidence(one_way=1, both_ways=1)}, POLICY)
    assert new == {} and state.suspect == {}
    state, _ = judge(state, bad, POLICY)
    state, new = judge(state, bad, POLICY)
    assert list(new) == ["ppp0"] and "3 offloaded flow(s) through ppp0" in new["ppp0"]
    assert state.refused == new and state.suspect == {}
    # Refused stays refused; one one-way flow alone never counts.
    state, new = judge(state, bad, POLICY)
    assert new == {} and list(state.refused) == ["ppp0"]
    _, new = judge(GuardState(), {"x": Evidence(one_way=1)}, GuardPolicy(looks=1))
    assert new == {}


def _config() -> Config:
    return Config(flowtables=(FlowtableConfig("ft", devices=("br-lan", "ppp0", "wg0"),
                                              stack=Stack.LOWER),))


def test_a_refused_device_is_attached_as_it_is() -> None:
    d = desired_state(_config(), GATEWAY, {}, 0, pppoe=SESSION,
                      shallow={"ppp0": "flows went one way only"})
    (ft,) = d.table.flowtables
    assert ft.devices == frozenset({"lan0", "lan1", "ppp0", "wg0"})
    guard = d.table.set(set_name("ft"))
    assert guard is not None and {"br-lan", "ppp0"} <= guard.elements
    stacks = {r.device: r for _sel, r in d.stacks}
    assert not stacks["ppp0"].stacked and "refused" in stacks["ppp0"].note
    assert stacks["br-lan"].stacked


class Samples:
    def __init__(self, looks: list[Look]) -> None:
        self.looks = looks

    def sample(self) -> Look:
        return self.looks.pop(0)


def test_the_guard_watches_stacked_devices_and_hands_over_a_refusal() -> None:
    status = Status(config_path=Path("/x"))
    status.reconcile.desired = desired_state(_config(), GATEWAY, {}, 0, pppoe=SESSION)
    got: list[Mapping[str, str]] = []
    flows = [(1, 0, 0, PPP), (2, 0, 0, PPP)]
    looks = [_look(t * 5, *((i, o + 50 * t, r, devs) for i, o, r, devs in flows))
             for t in range(4)]
    guard = StackGuard(Samples(looks), status, got.append, interval_s=5, policy=POLICY)
    assert guard.watched() == {"br-lan", "ppp0"}  # wg0: nothing beneath it

    async def main() -> None:
        for _ in range(3):
            await guard.look()

    asyncio.run(main())
    assert [sorted(g) for g in got] == [["br-lan", "ppp0"]]
    assert guard.counts.refusals_total == 2 and guard.counts.looks_total == 3
    assert set(guard.counts.refused) == {"br-lan", "ppp0"}
    assert guard.watched() == frozenset()
    guard.clear()
    assert guard.counts.refused == {} and guard.watched() == {"br-lan", "ppp0"}


class Failing:
    def __init__(self, looks: list[Look]) -> None:
        self.looks = looks

    def sample(self) -> Look:
        if not self.looks:
            raise KernelError("conntrack dump failed: Operation not permitted")
        return self.looks.pop(0)


def test_a_look_that_fails_judges_nothing_and_the_next_starts_afresh() -> None:
    status = Status(config_path=Path("/x"))
    status.reconcile.desired = desired_state(_config(), GATEWAY, {}, 0, pppoe=SESSION)
    got: list[Mapping[str, str]] = []
    one_way = [_look(t, (1, 50 * t, 0, PPP), (2, 50 * t, 0, PPP)) for t in range(2)]
    source = Failing(one_way)
    guard = StackGuard(source, status, got.append, interval_s=5, policy=POLICY)

    async def looks(n: int) -> None:
        for _ in range(n):
            await guard.look()

    asyncio.run(looks(4))  # two looks, then two that fail
    # Two looks made one suspect look; the failure broke the row.
    assert got == [] and guard.state.suspect == {}
    source.looks = [_look(t, (1, 50 * t, 0, PPP), (2, 50 * t, 0, PPP)) for t in range(5, 8)]
    asyncio.run(looks(2))
    # The first look after a failure has nothing to compare with: one suspect look.
    assert got == [] and guard.state.suspect == {"br-lan": 1, "ppp0": 1}
    asyncio.run(looks(1))
    assert [sorted(g) for g in got] == [["br-lan", "ppp0"]]


class NoLeftBehind:
    def scan(self, flowtable_of: Mapping[str, str]) -> Scan:
        return Scan(at=0.0)


class OneWayThroughBridge:
    """Offloaded flows through br-lan whose originals rise and replies stay flat."""

    def __init__(self) -> None:
        self.n = 0

    def sample(self) -> Look:
        self.n += 1
        return _look(self.n, (1, 50 * self.n, 7, BR), (2, 40 * self.n, 3, BR))


BR = frozenset({"br-lan", "wan0"})
BRIDGED = (Link(1, "br-lan", "bridge"), Link(2, "lan0", "veth", master=1),
           Link(3, "wan0", "veth"))
STACKED = """
[[flowtable]]
name = "ft"
devices = ["br-lan", "wan0"]
stack = "lower"
"""


def test_a_refusal_attaches_the_device_itself_and_replaces_its_flowtable(
        tmp_path: Path) -> None:
    """The daemon's side: the guard's refusal is planned by the next pass
    (br-lan in place of its port lan0) and the flowtable is replaced after it
    (its flows freed); a reload judges afresh."""
    async def scenario() -> None:
        path = tmp_path / "offloadd.toml"
        path.write_text(STACKED)
        b = FakeBackend()
        d = Daemon(path, parse_config(STACKED), b, links=FakeLinks(),
                   left_behind=NoLeftBehind(), flow_samples=OneWayThroughBridge(),
                   clock=asyncio.get_running_loop().time)
        assert isinstance(d.link_source, FakeLinks)
        task = asyncio.create_task(d.run(signals=(), control=False))
        d.link_source.push(*BRIDGED)
        await _until(lambda: b.state is not None)
        assert b.accounting  # the guard judges by conntrack's counters
        assert _devices(b) == {"lan0", "wan0"}
        await _until(lambda: _devices(b) == {"br-lan", "wan0"}, 60)
        assert d.guard is not None and list(d.guard.counts.refused) == ["br-lan"]
        await _until(lambda: d.status.repair.repairs_total == 1, 60)
        last = d.status.repair.last
        assert last is not None and "one way only" in str(last["reason"])
        report = format_status(status_report(d.status, "offloadd", "inet", b.read()))
        assert "REFUSED br-lan" in report
        d.request_reload()
        await _until(lambda: _devices(b) == {"lan0", "wan0"}, 60)
        d.request_stop()
        await asyncio.wait_for(task, 5)

    run_virtual(scenario)


async def _until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


def _devices(b: FakeBackend) -> set[str]:
    assert b.state is not None
    (ft,) = b.state.flowtables
    return set(ft.devices)


PPPOE_CONFIG = """
[[flowtable]]
name = "ft"
devices = ["lan0", "ppp0"]
"""
ETH1, ETH17 = Link(2, "eth1", None), Link(3, "eth1.7", "vlan", lower=2)
LAN = Link(1, "lan0", "veth")


def test_a_pppoe_reconnect_frees_the_flows_of_the_old_session(tmp_path: Path) -> None:
    """pppd deletes ppp0 and creates a new one with a new session faster than
    a pass sees the gap (measured: 0.9-1.3 s): eth1 stays in the flowtable,
    and the flows offloaded through it would go on pushing the old session's
    id. The flowtable is replaced once after the pass that sees the new ppp0;
    a pass with nothing new replaces nothing."""
    async def scenario() -> None:
        path = tmp_path / "offloadd.toml"
        path.write_text(PPPOE_CONFIG)
        b = FakeBackend(pppoe=PppoeSessions(("eth1.7",), ("00000100",)))
        d = Daemon(path, parse_config(PPPOE_CONFIG), b, links=FakeLinks(),
                   left_behind=NoLeftBehind(), clock=asyncio.get_running_loop().time)
        assert isinstance(d.link_source, FakeLinks)
        task = asyncio.create_task(d.run(signals=(), control=False))
        d.link_source.push(LAN, ETH1, ETH17, Link(8, "ppp0", "ppp"))
        await _until(lambda: b.state is not None and _devices(b) == {"lan0", "eth1"})
        d.link_source.push(LAN, ETH1, ETH17, Link(8, "ppp0", "ppp"), Link(5, "wan5", None))
        await _until(lambda: d.status.reconciles_total >= 2)
        await asyncio.sleep(5)
        assert d.status.repair.repairs_total == 0  # nothing about ppp0 changed
        b.pppoe = PppoeSessions(("eth1.7",), ("00000200",))
        d.link_source.push(LAN, ETH1, ETH17, Link(9, "ppp0", "ppp"))
        await _until(lambda: d.status.repair.repairs_total == 1, 30)
        last = d.status.repair.last
        assert last is not None and "ppp0 went or came back" in str(last["reason"])
        assert _devices(b) == {"lan0", "eth1"}
        await asyncio.sleep(10)
        assert d.status.repair.repairs_total == 1
        d.request_stop()
        await asyncio.wait_for(task, 5)

    run_virtual(scenario)


def test_the_guards_pace_and_thresholds_are_settings_a_reload_applies(tmp_path: Path) -> None:
    text = "[daemon]\nstack_guard_interval = 7\nstack_guard_packets = 3\n" \
           "stack_guard_flows = 1\nstack_guard_looks = 4\n" + STACKED
    path = tmp_path / "offloadd.toml"
    path.write_text(text)
    d = Daemon(path, parse_config(text), FakeBackend(), links=FakeLinks(),
               flow_samples=OneWayThroughBridge())
    assert d.guard is not None
    assert (d.guard._interval_s, d.guard._policy) == (7, GuardPolicy(3, 1, 4))
    path.write_text(STACKED)
    d.reload()
    assert (d.guard._interval_s, d.guard._policy) == (5, GuardPolicy())
    with pytest.raises(ConfigError, match="stack_guard_looks"):
        parse_config("[daemon]\nstack_guard_looks = 0\n" + STACKED)
