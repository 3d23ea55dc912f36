"""The repair decision: when flows left behind call for a flowtable replacement,
when they do not (rate limit, a repair that did not help), and the one-batch
replacement itself checked by the simulator; the Repairer against fakes, its
waits on a virtual clock (tests.unit.virtualtime) with the daemon's delays."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from offloadd.cli.format import format_repair
from offloadd.core.configparse import parse_config
from offloadd.core.errors import ConfigError
from offloadd.core.flows import IPS_OFFLOAD
from offloadd.core.model import ChainState, FlowtableState, Link, SetState, TableState
from offloadd.core.plan import (
    CreateChain,
    CreateFlowtable,
    DeleteChain,
    DeleteFlowtable,
    compute_plan,
    release_flowtables_plan,
    replace_flowtables_plan,
)
from offloadd.core.repair import (
    NF_CT_DAY_S,
    FlowtableRecord,
    HeldEntry,
    RepairPolicy,
    Scan,
    day_timeout,
    decide,
    held_without_offload,
    left_behind,
    pending_second_look,
)
from offloadd.core.simulate import apply_plan
from offloadd.service.daemon import Daemon
from offloadd.service.repairer import Repairer
from offloadd.service.report import status_report
from offloadd.service.timing import Timing
from tests.unit.fakes import FakeBackend, FakeLinks
from tests.unit.virtualtime import run_virtual

SEEN_REPLY, ASSURED = 1 << 1, 1 << 2
POLICY = RepairPolicy(min_interval_s=1.5, settle_s=1.0, backoff_s=60.0, backoff_max_s=900.0)
IDS = frozenset({1, 2, 3})


# -- which entries are left behind ------------------------------------------------

def test_candidates_are_held_and_not_offloaded() -> None:
    # As 7.3.4 shows them: no [OFFLOAD], use=2 (the flowtable's reference).
    assert held_without_offload(SEEN_REPLY, 86392, 2)
    assert held_without_offload(0, 115, 2)
    assert not held_without_offload(SEEN_REPLY | IPS_OFFLOAD, None, 2)  # offloaded
    assert not held_without_offload(SEEN_REPLY | ASSURED, 86000, 1)  # nothing holds it
    assert not held_without_offload(SEEN_REPLY, None, None)


def _scan(at: float, **held: tuple[int, str | None]) -> Scan:
    return Scan(at=at, held={int(k[1:]): HeldEntry(t, ft) for k, (t, ft) in held.items()})


def test_day_long_timeout_is_left_behind_at_once() -> None:
    # 7.3 after a route cache flush: 86392 s left, not offloaded, held.
    assert left_behind(_scan(5.0, i1=(86392, "ft"), i2=(86000, "ft")), None) == {
        "ft": frozenset({1, 2})}
    assert day_timeout(86392) and not day_timeout(NF_CT_DAY_S // 2) and not day_timeout(119)
    # Established TCP on the slow path (refreshed to 5 days) is no sign.
    assert not day_timeout(431999)


def test_an_entry_whose_timeout_only_ran_down_across_the_gap_is_left_behind() -> None:
    # Also 7.3: the flow's normal timeout (115 s), held, not offloaded, and
    # conntrack sees none of its packets: the flowtable forwards them.
    first = _scan(10.0, i7=(118, "ft"), i8=(119, "ft"))
    later = _scan(12.5, i7=(115, "ft"), i8=(120, "ft"))  # 8 was refreshed: on the slow path
    assert left_behind(first, None) == {}
    assert left_behind(later, first) == {"ft": frozenset({7})}
    # Too close together to tell from garbage collection freeing it.
    assert left_behind(_scan(11.0, i7=(117, "ft")), first) == {}
    # Gone from the second scan (the flowtable released it): nothing.
    assert left_behind(_scan(12.5), first) == {}
    # Reset lower, not run down: a teardown's fix-up (86392 before a
    # replacement, 118 while the flow moves to the new flowtable entry).
    before = _scan(20.0, i9=(86392, "ft"))
    assert left_behind(_scan(22.5, i9=(118, "ft")), before) == {}


def test_entries_through_no_device_of_offloadd_are_never_acted_on() -> None:
    assert left_behind(_scan(5.0, i1=(86392, None)), None) == {}


# -- the decision ---------------------------------------------------------------

def test_nothing_found_repairs_nothing_and_asks_for_no_recheck() -> None:
    d = decide({}, 10.0, {}, POLICY)
    assert d.repair == () and d.held == () and d.recheck_in is None


def test_entries_left_behind_repair_only_their_flowtable() -> None:
    d = decide({}, 10.0, {"ft": IDS}, POLICY)
    assert d.repair == ("ft",)
    assert d.records["ft"].unverified == IDS
    assert d.recheck_in == POLICY.settle_s  # to judge the repair


def test_rate_limit_holds_a_second_repair_and_says_when() -> None:
    first = decide({}, 10.0, {"ft": IDS}, POLICY)
    # New entries left behind 0.5 s later (flows whose next packet came late).
    # Within the settle time nothing is judged or done.
    early = decide(first.records, 10.5, {"ft": frozenset({9})}, POLICY)
    assert early.repair == () and early.recheck_in == pytest.approx(0.5)
    d = decide(early.records, 11.2, {"ft": frozenset({9})}, POLICY)
    assert d.repair == () and d.ineffective == ()  # {9} is new: the repair helped
    assert d.held and "next repair in 0.3 s" in d.held[0].reason
    assert d.recheck_in == pytest.approx(0.3)
    later = decide(d.records, 11.6, {"ft": frozenset({9})}, POLICY)
    assert later.repair == ("ft",)


def test_a_repair_that_helped_is_forgotten_and_the_next_event_repairs_again() -> None:
    r1 = decide({}, 10.0, {"ft": IDS}, POLICY)
    ok = decide(r1.records, 11.5, {}, POLICY)
    assert ok.ineffective == () and ok.records["ft"].unverified == frozenset()
    # The same flows left behind again by a later device removal.
    again = decide(ok.records, 20.0, {"ft": IDS}, POLICY)
    assert again.repair == ("ft",)


def test_a_repair_that_did_not_help_backs_off_and_doubles() -> None:
    r1 = decide({}, 10.0, {"ft": IDS}, POLICY)
    bad = decide(r1.records, 11.5, {"ft": IDS}, POLICY)
    assert bad.repair == ()
    assert bad.ineffective and "3 of the 3 entries" in bad.ineffective[0].reason
    assert bad.records["ft"].hold_until == pytest.approx(71.5)
    held = decide(bad.records, 30.0, {"ft": IDS}, POLICY)
    assert held.repair == () and "next try in" in held.held[0].reason
    retry = decide(held.records, 72.0, {"ft": IDS}, POLICY)
    assert retry.repair == ("ft",)
    bad2 = decide(retry.records, 73.5, {"ft": IDS}, POLICY)
    assert bad2.records["ft"].backoff_s == 120.0


def test_backoff_is_capped() -> None:
    rec = FlowtableRecord(last_repair=0.0, unverified=IDS, backoff_s=800.0)
    d = decide({"ft": rec}, 2.0, {"ft": IDS}, POLICY)
    assert d.records["ft"].backoff_s == POLICY.backoff_max_s


def test_judging_waits_for_the_settle_time() -> None:
    r1 = decide({}, 10.0, {"ft": IDS}, POLICY)
    early = decide(r1.records, 10.3, {"ft": IDS}, POLICY)
    assert early.ineffective == () and early.repair == ()
    assert early.records["ft"].unverified == IDS


def test_flowtables_are_judged_apart() -> None:
    d = decide({}, 10.0, {"a": IDS, "b": frozenset({7})}, POLICY)
    assert d.repair == ("a", "b")
    d2 = decide(d.records, 11.2, {"b": frozenset({7})}, POLICY)
    assert [h.flowtable for h in d2.ineffective] == ["b"]
    assert d2.records["a"].backoff_s == 0.0


# -- the replacement batch --------------------------------------------------------

TABLE = TableState(
    "offloadd", "inet",
    flowtables=(FlowtableState("ft", frozenset({"lan0", "wan0"}), False, True),
                FlowtableState("other", frozenset({"lan1"}), False, True)),
    sets=(SetState("ft_ifs", frozenset({"lan0", "wan0"})), SetState("other_ifs",
                                                                     frozenset({"lan1"}))),
    chain=ChainState(10, ("meta l4proto { tcp, udp } iifname @ft_ifs oifname @ft_ifs "
                          "flow add @ft",
                          "meta l4proto { tcp, udp } iifname @other_ifs oifname @other_ifs "
                          "flow add @other")))


def test_replacement_is_valid_and_leaves_the_same_state() -> None:
    plan = replace_flowtables_plan(TABLE, ["ft"])
    assert [type(op) for op in plan.ops] == [DeleteChain, DeleteFlowtable, CreateFlowtable,
                                             CreateChain]
    assert apply_plan(TABLE, plan) == TABLE  # the simulator refuses EBUSY orders


def test_release_then_reconcile_is_the_same_replacement_in_two_steps() -> None:
    release = release_flowtables_plan(TABLE, ["ft"])
    assert [type(op) for op in release.ops] == [DeleteChain, DeleteFlowtable, CreateFlowtable,
                                                CreateChain]
    gap = apply_plan(TABLE, release)
    # The flowtable is there; only the rule that adds flows to it is held back.
    assert gap is not None and gap.flowtable("ft") == TABLE.flowtable("ft")
    assert gap.chain is not None and TABLE.chain is not None
    assert [r for r in gap.chain.rules if "flow add" in r] == [
        r for r in TABLE.chain.rules if "flow add" in r and "@ft" not in r.split("flow add")[1]]
    second = compute_plan(TABLE, gap)
    assert [type(op) for op in second.ops] == [DeleteChain, CreateChain]
    assert apply_plan(gap, second) == TABLE


def test_replacement_of_unknown_flowtables_is_empty() -> None:
    assert replace_flowtables_plan(TABLE, ["nope"]).is_empty


# -- the Repairer on fakes --------------------------------------------------------

@dataclass
class FakeScanner:
    scans: list[Mapping[str, frozenset[int]]] = field(default_factory=list)
    seen: list[Mapping[str, str]] = field(default_factory=list)
    # The repairer's clock: scans are stamped on it (the kernel's on time.monotonic).
    clock: Callable[[], float] = time.monotonic

    def scan(self, flowtable_of: Mapping[str, str]) -> Scan:
        self.seen.append(dict(flowtable_of))
        found = self.scans.pop(0) if self.scans else {}
        return Scan(at=self.clock(), held={i: HeldEntry(86392, ft)
                                           for ft, ids in found.items() for i in ids})


CONFIG = '[[flowtable]]\nname = "ft"\ndevices = ["lan*", "wan*"]\n'


def _daemon(tmp_path: Path, scanner: FakeScanner, extra: str = "", *,
            timing: Timing = Timing(),
            clock: Callable[[], float] = time.monotonic) -> tuple[Daemon, FakeBackend]:
    path = tmp_path / "offloadd.toml"
    path.write_text(extra + CONFIG)
    b = FakeBackend()
    d = Daemon(path, parse_config(extra + CONFIG), b, links=FakeLinks(), left_behind=scanner,
               timing=timing, clock=clock)
    d.status.links = (Link(1, "lan0", "veth"), Link(2, "wan0", "veth"))
    d.reconcile()
    return d, b


def _on_loop(tmp_path: Path, scanner: FakeScanner, *,
             timing: Timing = Timing()) -> tuple[Daemon, FakeBackend]:
    """A daemon for the running (virtual-time) loop: the repairer's waits and
    the scans' stamps on that loop's clock."""
    scanner.clock = asyncio.get_running_loop().time
    return _daemon(tmp_path, scanner, timing=timing, clock=scanner.clock)


def test_repairer_replaces_the_flowtable_and_reports_it(tmp_path: Path) -> None:
    scanner = FakeScanner([{"ft": IDS}])

    async def go() -> tuple[Daemon, FakeBackend, TableState | None]:
        d, b = _on_loop(tmp_path, scanner)
        before = b.state
        assert d.repairer is not None
        await d.repairer.check()
        # One look after the delete, at the first poll.
        assert asyncio.get_running_loop().time() == d.timing.repair_release_poll_s
        return d, b, before

    d, b, before = run_virtual(go)
    assert scanner.seen[0] == {"lan0": "ft", "wan0": "ft"}
    assert b.state == before
    # Two steps: delete, then (the entries released: the next scan holds none) create.
    release, create = b.applied[-2:]
    assert [type(op) for op in release.ops] == [DeleteChain, DeleteFlowtable, CreateFlowtable,
                                                CreateChain]
    assert [type(op) for op in create.ops] == [DeleteChain, CreateChain]
    assert len(scanner.seen) == 2  # the first look after the delete saw them released
    assert d.status.repair.repairs_total == 1 and d.status.repair.left_behind_flows == 3
    assert d.status.repair.last is not None and d.status.repair.last["flowtables"] == ["ft"]


def test_offloadctl_repair_replaces_the_flowtables_it_names_now(tmp_path: Path) -> None:
    """The operator's `offloadctl repair`: the repair's two steps at the next
    check whatever the scan finds (here: nothing left behind); a name that is
    none of offloadd's flowtables is refused with the names there are, and
    nothing is scheduled."""
    scanner = FakeScanner()

    async def go() -> tuple[Daemon, FakeBackend, TableState | None, dict[str, Any]]:
        d, b = _on_loop(tmp_path, scanner)
        before = b.state
        handler = d.control_handlers()["repair"]
        with pytest.raises(ConfigError, match="no flowtable 'lan' in offloadd's table; "
                                              "its flowtables: ft"):
            await handler({"flowtables": ["lan"]})
        with pytest.raises(ConfigError, match="must be a list"):
            await handler({"flowtables": "ft"})
        assert d.repairer is not None
        await d.repairer.check()
        assert len(b.applied) == 1  # nothing but the first reconcile: no scan asked
        out = await handler({"by": "offloadctl", "flowtables": []})
        await d.repairer.check()
        return d, b, before, out

    d, b, before, out = run_virtual(go)
    assert out == {"scheduled": True, "flowtables": ["ft"], "repairs_total": 0}
    assert b.state == before
    release, create = b.applied[-2:]
    assert [type(op) for op in release.ops] == [DeleteChain, DeleteFlowtable, CreateFlowtable,
                                                CreateChain]
    assert [type(op) for op in create.ops] == [DeleteChain, CreateChain]
    assert d.status.repair.repairs_total == 1
    last = d.status.repair.last
    assert last is not None and last["reason"] == "a request (offloadctl repair)", last


def test_entries_never_released_still_get_their_flowtable_back(tmp_path: Path) -> None:
    # The kernel keeps holding them (every scan finds them): after the wait,
    # the flowtable comes back anyway; the next checks judge the repair.
    scanner = FakeScanner([{"ft": IDS}] * 20)

    async def go() -> tuple[Daemon, FakeBackend, TableState | None]:
        d, b = _on_loop(tmp_path, scanner, timing=Timing(repair_release_max_s=0.6))
        before = b.state
        assert d.repairer is not None
        await d.repairer.check()
        return d, b, before

    d, b, before = run_virtual(go)
    assert b.state == before and d.status.repair.repairs_total == 1
    # The check's scan, then one per poll (0.25 s) until 0.6 s had passed.
    assert len(scanner.seen) == 1 + 3


def test_repairer_does_nothing_when_nothing_is_left_behind(tmp_path: Path) -> None:
    d, b = _daemon(tmp_path, FakeScanner())
    applied = len(b.applied)
    assert d.repairer is not None
    asyncio.run(d.repairer.check())
    assert len(b.applied) == applied and d.status.repair.repairs_total == 0
    assert d.status.repair.checks_total == 1


def test_repair_off_in_config_never_scans(tmp_path: Path) -> None:
    scanner = FakeScanner([{"ft": IDS}])
    d, _b = _daemon(tmp_path, scanner, '[daemon]\nrepair = "off"\n')
    assert d.repairer is not None
    asyncio.run(d.repairer.check())
    assert scanner.seen == [] and d.status.repair.repairs_total == 0


def test_repairer_waits_while_the_table_is_out_of_sync(tmp_path: Path) -> None:
    d, b = _daemon(tmp_path, FakeScanner([{"ft": IDS}]))
    b.state = None  # someone deleted the table; the next reconcile brings it back
    assert d.repairer is not None
    asyncio.run(d.repairer.check())
    assert d.status.repair.repairs_total == 0 and b.state is None


def test_a_failed_replacement_keeps_the_state_and_is_reported(tmp_path: Path) -> None:
    d, b = _daemon(tmp_path, FakeScanner([{"ft": IDS}]))
    before = b.state
    b.refuse_all = "Device or resource busy"
    assert d.repairer is not None
    asyncio.run(d.repairer.check())
    assert b.state == before and d.status.repair.repairs_total == 0
    assert "repair failed" in d.status.last_error


def test_a_route_cache_flush_schedules_checks(tmp_path: Path) -> None:
    scanner = FakeScanner()
    seen_at: list[int] = []

    async def go() -> None:
        d, _b = _on_loop(tmp_path, scanner)
        assert d.repairer is not None
        d.repairer.route_cache_flushed()
        task = asyncio.create_task(d.repairer.run())
        for t in (0.9, 1.1, 2.9, 3.4):
            await asyncio.sleep(t - asyncio.get_running_loop().time())
            seen_at.append(len(scanner.seen))
        task.cancel()

    run_virtual(go)
    assert seen_at == [0, 1, 1, 2]  # 1 s and 3 s after the removal


def test_a_link_event_that_flushes_the_route_cache_schedules_checks(tmp_path: Path) -> None:
    """A bridge port joining flushes the route cache (the port comes up, the
    bridge's address may change) without any link going away, and on 7.3 that
    leaves the IPv4 flows behind: the snapshot's flush count makes the
    running daemon look 1 s and 3 s later, without a reconcile pass; a
    snapshot with no new flush schedules nothing."""
    scanner = FakeScanner()
    links = (Link(1, "lan0", "veth"), Link(2, "wan0", "veth"))

    async def go() -> tuple[list[int], int]:
        d, _b = _on_loop(tmp_path, scanner)
        source = d.link_source
        assert isinstance(source, FakeLinks)
        task = asyncio.create_task(d.run(signals=(), control=False))
        source.push(*links)
        await asyncio.sleep(10)
        counts = [len(scanner.seen)]
        passes = d.status.reconciles_total
        source.push(*links, flushes=1)
        await asyncio.sleep(3.5)
        counts.append(len(scanner.seen))
        source.push(*links)  # e.g. a resync's dump that found nothing missed
        await asyncio.sleep(10)
        counts.append(len(scanner.seen))
        flush_passes = d.status.reconciles_total - passes
        d.request_stop()
        await asyncio.wait_for(task, 2)
        return counts, flush_passes

    counts, flush_passes = run_virtual(go)
    assert counts[1] - counts[0] == 2 and counts[2] == counts[1], counts
    assert flush_passes == 0


@dataclass
class CostlyScan:
    """A scanner whose every scan takes ``cost_s`` on the CPU clock the
    repairer times scans with (a million-entry walk: seconds under TCG)."""

    inner: FakeScanner
    cost_s: float
    elapsed: float = 0.0

    def scan(self, flowtable_of: Mapping[str, str]) -> Scan:
        self.elapsed += self.cost_s
        return self.inner.scan(flowtable_of)

    def clock(self) -> float:
        return self.elapsed


async def _flush_and_look(rep: Repairer, inner: FakeScanner,
                          steps: tuple[tuple[float, bool], ...]) -> list[int]:
    """Runs the repairer; at each (time, flush) step a route cache flush, or
    a look at how many scans it made so far (the looks are returned)."""
    task = asyncio.create_task(rep.run())
    counts = []
    for at, flush in steps:
        await asyncio.sleep(at - asyncio.get_running_loop().time())
        if flush:
            rep.route_cache_flushed()
        else:
            counts.append(len(inner.seen))
    task.cancel()
    return counts


def _costly_repairer(d: Daemon, scanner: CostlyScan) -> Repairer:
    return Repairer(d.writer, scanner, d.status, timing=d.timing,
                    clock=asyncio.get_running_loop().time, scan_cpu_clock=scanner.clock)


def test_checks_after_flushes_keep_to_the_scan_budget(tmp_path: Path) -> None:
    """A 2-s scan (a million entries) on a kernel not seen leaving flows
    behind: the first flush is checked 1 s later as asked, the next check
    waits 2 s x 19 after that scan (5 % of the time), and the flushes
    meanwhile (a link flapping) are all answered by that one check."""
    inner = FakeScanner()
    costly = CostlyScan(inner, 2.0)

    async def go() -> tuple[list[int], Repairer]:
        d, _b = _on_loop(tmp_path, inner)
        rep = _costly_repairer(d, costly)
        counts = await _flush_and_look(rep, inner, ((0.0, True), (1.1, False), (5.0, True),
                                                    (10.0, True), (20.0, True), (38.9, False),
                                                    (39.2, False), (150.0, False)))
        return counts, rep

    counts, rep = run_virtual(go)
    assert counts == [1, 1, 2, 2], counts
    assert rep.counts.flush_checks_deferred_total == 3
    assert rep.counts.last_scan_cpu_s == 2.0
    report = {"mode": "auto", "repairs_total": 0, "checks_total": rep.counts.checks_total,
              "left_behind_flows": 0, "leaves_behind_since": None,
              "last_scan_seconds": 2.5, "last_scan_cpu_seconds": rep.counts.last_scan_cpu_s,
              "flush_checks_deferred_total": rep.counts.flush_checks_deferred_total}
    line = format_repair(report)
    assert "last scan 2.50 s (2.00 s CPU); 3 route cache flush(es) checked later" in line


def test_a_cheap_scan_never_holds_a_check_back(tmp_path: Path) -> None:
    inner = FakeScanner()
    costly = CostlyScan(inner, 0.005)  # a few thousand entries

    async def go() -> tuple[list[int], Repairer]:
        d, _b = _on_loop(tmp_path, inner)
        rep = _costly_repairer(d, costly)
        counts = await _flush_and_look(rep, inner, ((0.0, True), (1.05, False), (3.05, False),
                                                    (4.0, True), (5.05, False), (7.05, False)))
        return counts, rep

    counts, rep = run_virtual(go)
    assert counts == [1, 2, 3, 4], counts
    assert rep.counts.flush_checks_deferred_total == 0


def test_a_kernel_that_leaves_flows_behind_is_checked_after_every_flush(
        tmp_path: Path) -> None:
    """Once seen (7.3), prompt beats cheap: a flow left behind skips every
    later policy check, so the budget no longer holds checks back."""
    inner = FakeScanner()
    costly = CostlyScan(inner, 2.0)

    async def go() -> list[int]:
        d, _b = _on_loop(tmp_path, inner)
        rep = _costly_repairer(d, costly)
        rep.counts.leaves_behind_since = time.time()
        counts = await _flush_and_look(rep, inner, ((0.0, True), (1.05, False), (3.05, False),
                                                    (4.0, True), (5.05, False), (7.05, False)))
        return counts

    assert run_virtual(go) == [1, 2, 3, 4]


def test_no_periodic_check_until_the_kernel_leaves_a_flow_behind(tmp_path: Path) -> None:
    # A kernel without the regression never pays a periodic conntrack walk;
    # once a check (here after a removal) finds flows left behind, one every
    # repair_periodic_s follows.
    scanner = FakeScanner([{}, {"ft": IDS}])
    seen_at: list[int] = []

    async def go() -> Daemon:
        d, _b = _on_loop(tmp_path, scanner)
        assert d.repairer is not None
        task = asyncio.create_task(d.repairer.run())
        await asyncio.sleep(100)
        seen_at.append(len(scanner.seen))  # 100 s, no event: no check
        d.repairer.route_cache_flushed()  # checks 1 s and 3 s later: the second finds them
        await asyncio.sleep(10)
        seen_at.append(len(scanner.seen))
        assert d.status.repair.leaves_behind_since is not None
        await asyncio.sleep(3 * d.timing.repair_periodic_s)
        seen_at.append(len(scanner.seen))
        task.cancel()
        return d

    d = run_virtual(go)
    assert seen_at[0] == 0
    # The removal's two checks, then the repair's release poll and its own
    # settle checks: all before the periodic ones.
    after_removal = seen_at[1]
    assert after_removal >= 3
    assert seen_at[2] - after_removal >= 3  # one each 30 s since
    rep = status_report(d.status, "offloadd", "inet", None, repair_mode="auto")["repair"]
    assert "periodic check: on, this kernel left flows behind first" in format_repair(rep)


def test_status_says_the_periodic_check_waits_for_evidence(tmp_path: Path) -> None:
    d, b = _daemon(tmp_path, FakeScanner())
    assert d.repairer is not None
    asyncio.run(d.repairer.check())
    rep = status_report(d.status, "offloadd", "inet", b.state, repair_mode="auto")["repair"]
    assert rep["leaves_behind_since"] is None
    assert "periodic check: off until this kernel leaves a flow behind" in format_repair(rep)


# -- what the operator sees ---------------------------------------------------------

def test_status_report_and_offloadctl_line_show_the_last_repair(tmp_path: Path) -> None:
    scanner = FakeScanner([{"ft": IDS}])

    async def go() -> tuple[Daemon, FakeBackend]:
        d, b = _on_loop(tmp_path, scanner)
        assert d.repairer is not None
        await d.repairer.check()
        return d, b

    d, b = run_virtual(go)
    rep = status_report(d.status, "offloadd", "inet", b.state, repair_mode="auto")["repair"]
    assert rep["repairs_total"] == 1 and rep["checks_total"] == 1
    assert rep["last"]["flowtables"] == ["ft"] and rep["last"]["flows"] == {"ft": 3}
    line = format_repair(rep)
    assert line.startswith("repair (auto): 1 flowtable replacement(s) in 1 checks")
    assert "ft (3 flows)" in line and "left behind by the kernel" in line


def test_a_second_look_is_asked_for_unjudged_entries_only() -> None:
    first = _scan(10.0, i7=(118, "ft"), i8=(86392, "ft"), i9=(50, None))
    # 8 is left behind at once, 9 is not offloadd's: 7 needs a second look.
    assert pending_second_look(first, None, left_behind(first, None), 1.5)
    # Seen again 2 s later and refreshed (a slow-path flow): judged, no polling.
    later = _scan(12.0, i7=(120, "ft"))
    assert not pending_second_look(later, first, left_behind(later, first), 1.5)
    # Seen again only 1 s later (the check after a repair, its timeout reset
    # by the teardown): still to be judged.
    soon = _scan(11.0, i7=(119, "ft"))
    assert pending_second_look(soon, first, left_behind(soon, first), 1.5)
