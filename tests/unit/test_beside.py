"""Firewalls beside offloadd: iptables-legacy tables (the forward priority), and
changes to tables no forwarded packet meets (no re-validation for them)."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

from offloadd.cli.format import format_legacy, format_revalidate
from offloadd.core.configparse import parse_config
from offloadd.core.errors import NftError, OffloaddError
from offloadd.core.model import Link
from offloadd.core.revalidate import (
    OVERRUN_TRIGGER,
    NftChanges,
    ObjectKind,
    TableChange,
    Transaction,
    Verb,
    decide,
    meets_forwarded,
    policy_tables,
)
from offloadd.core.xtables import Hook, LegacyTables, from_forward_hooks
from offloadd.kernel import xtables
from offloadd.kernel.nftstate import base_chain_hooks
from offloadd.kernel.xtables import legacy_tables
from offloadd.service.daemon import Daemon
from offloadd.service.policyscope import PolicyScope
from offloadd.service.report import status_report
from offloadd.service.timing import Timing
from tests.unit.fakes import FakeBackend, FakeLinks
from tests.unit.virtualtime import run_virtual

CONFIG = """
[[flowtable]]
name = "ft"
devices = ["lan*", "wan*"]
"""
OWN = ("inet", "offloadd")
ELEMENT = ObjectKind.ELEMENT
ADD = Verb.ADD


def _tx(*changes: tuple[ObjectKind, Verb, str, str], pid: int = 77) -> Transaction:
    return Transaction(tuple(TableChange(*c) for c in changes), pid, "nft")


def _batch(*txs: Transaction, overrun: bool = False) -> NftChanges:
    return NftChanges(tuple(txs), overrun)


def _daemon(tmp_path: Path, b: FakeBackend | None = None,
            text: str = CONFIG, timing: Timing = Timing()) -> tuple[Daemon, FakeBackend]:
    path = tmp_path / "offloadd.toml"
    path.write_text(text)
    b = b or FakeBackend()
    d = Daemon(path, parse_config(text), b, links=FakeLinks(), timing=timing)
    d.status.links = (Link(1, "lan0", "veth"), Link(2, "wan0", "veth"))
    return d, b


# -- iptables-legacy: the pure side -----------------------------------------------------
def test_legacy_forward_priorities_per_table() -> None:
    assert LegacyTables().forward_priorities() == []
    assert LegacyTables(ipv4=frozenset({"filter"})).forward_priorities() == [0]
    both = LegacyTables(ipv4=frozenset({"filter", "raw", "nat"}),
                        ipv6=frozenset({"mangle", "security"}))
    assert both.forward_hooks() == {"ip filter": 0, "ip6 mangle": -150, "ip6 security": 50}
    assert both.forward_priorities() == [-150, 0, 50]
    assert "ip raw (no FORWARD hook)" in both.describe()
    assert "ip filter (FORWARD priority 0)" in both.describe()


def test_legacy_unknown_table_and_unreadable_lists_are_conservative() -> None:
    assert LegacyTables(ipv4=frozenset({"weird"})).forward_priorities() == [50]
    blind = LegacyTables(unreadable="cannot read /proc/net/ip_tables_names: Permission denied")
    assert blind.forward_priorities() == [-150, 0, 50]
    assert "assumed" in blind.describe()
    assert LegacyTables().describe() == "no iptables-legacy tables loaded"


def test_reader_reads_both_lists(tmp_path: Path) -> None:
    assert legacy_tables(tmp_path) == LegacyTables()  # no ip_tables module: no file
    (tmp_path / "ip_tables_names").write_text("filter\nmangle\n")
    (tmp_path / "ip6_tables_names").write_text("")
    assert legacy_tables(tmp_path) == LegacyTables(ipv4=frozenset({"filter", "mangle"}))
    (tmp_path / "ip6_tables_names").unlink()
    (tmp_path / "ip6_tables_names").mkdir()  # unreadable
    got = legacy_tables(tmp_path, hooks=_no_hook_list)
    assert got.unreadable and "ip6_tables_names" in got.unreadable
    assert got.forward_priorities() == [-150, 0, 50]


def _no_hook_list(_family: socket.AddressFamily) -> list[Hook]:
    raise OSError(22, "Invalid argument")


# -- iptables-legacy: the daemon ------------------------------------------------------------
@pytest.mark.parametrize(("legacy", "others", "want"), [
    (LegacyTables(), [], 0),
    (LegacyTables(ipv4=frozenset({"filter"})), [], 1),  # strictly after, not equal
    (LegacyTables(ipv6=frozenset({"security"})), [0], 51),
    (LegacyTables(ipv4=frozenset({"filter"})), [10], 11),
    (LegacyTables(ipv4=frozenset({"raw", "nat"})), [], 0),
    (LegacyTables(unreadable="no"), [], 51),
])
def test_auto_priority_runs_after_legacy_forward_hooks(
        tmp_path: Path, legacy: LegacyTables, others: list[int], want: int) -> None:
    d, b = _daemon(tmp_path, FakeBackend(others=others, legacy=legacy))
    d.reconcile()
    assert b.state is not None and b.state.chain is not None
    assert b.state.chain.priority == want
    assert d.status.legacy == legacy


def test_a_fixed_priority_before_a_legacy_hook_is_reported(tmp_path: Path) -> None:
    legacy = LegacyTables(ipv4=frozenset({"filter", "security"}))
    d, b = _daemon(tmp_path, FakeBackend(legacy=legacy),
                   "[daemon]\npriority = 10\n" + CONFIG)
    d.reconcile()
    report = status_report(d.status, "offloadd", "inet", b.state)
    assert report["legacy"]["before"] == ["ip security"]
    lines = format_legacy(report["legacy"])
    assert "does NOT run after ip security" in lines[0]
    assert "offloadctl revalidate" in lines[1]
    # With "auto" it runs after them all, and says so.
    d2, b2 = _daemon(tmp_path, FakeBackend(legacy=legacy))
    d2.reconcile()
    r2 = status_report(d2.status, "offloadd", "inet", b2.state)["legacy"]
    assert r2["before"] == [] and "runs after their FORWARD hooks" in format_legacy(r2)[0]
    # Nothing loaded: no line at all.
    d3, b3 = _daemon(tmp_path)
    d3.reconcile()
    assert format_legacy(status_report(d3.status, "offloadd", "inet", b3.state)["legacy"]) == []


def test_a_legacy_table_that_appears_moves_the_chain_and_revalidates(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d, b = _daemon(tmp_path, timing=Timing(legacy_poll_s=0.01))
    d.reconcile()

    async def go() -> None:
        task = asyncio.create_task(d._watch_legacy())
        await asyncio.sleep(0.05)
        assert d.revalidator._schedule.pending is None  # nothing changed yet
        b.legacy = LegacyTables(ipv4=frozenset({"filter"}))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if d._wake.is_set():
                break
        task.cancel()

    run_virtual(go)
    pending = d.revalidator._schedule.pending
    assert pending is not None and pending.triggers == (
        "iptables-legacy table(s) loaded: ip filter",)
    with caplog.at_level(logging.INFO, logger="offloadd"):
        d.reconcile()
    assert "iptables-legacy tables loaded: ip filter (FORWARD priority 0)" in caplog.text
    assert b.state is not None and b.state.chain is not None and b.state.chain.priority == 1


def test_a_legacy_table_a_reconcile_read_first_still_revalidates(
        tmp_path: Path) -> None:
    """ip6tables-legacy loads its table while a pass runs for iptables-legacy's:
    the pass reads it first; the poll must still re-validate for it (the
    2026-12-03 slow-day rehearsal: IPv6 reply drops stayed offloaded)."""
    d, b = _daemon(tmp_path, timing=Timing(legacy_poll_s=0.01))
    b.legacy = LegacyTables(ipv4=frozenset({"filter"}))
    d.reconcile()

    async def go() -> None:
        task = asyncio.create_task(d._watch_legacy())
        await asyncio.sleep(0.05)
        b.legacy = LegacyTables(ipv4=frozenset({"filter"}), ipv6=frozenset({"filter"}))
        d.reconcile()  # reads the new table before the poll does
        for _ in range(100):
            await asyncio.sleep(0.01)
            if d.revalidator._schedule.pending is not None:
                break
        task.cancel()

    run_virtual(go)
    pending = d.revalidator._schedule.pending
    assert pending is not None and pending.triggers == (
        "iptables-legacy table(s) loaded: ip filter, ip6 filter",)


def test_revalidate_command_schedules_one(tmp_path: Path) -> None:
    d, _b = _daemon(tmp_path)
    d.reconcile()
    async def ask() -> Any:
        return await d.control_handlers()["revalidate"]({})

    out = asyncio.run(ask())
    assert out["scheduled"] and out["revalidate"] == "on-change"
    pending = d.revalidator._schedule.pending
    assert pending is not None and pending.triggers == ("a request (offloadctl revalidate)",)
    assert d.revalidator.revalidate() and d.status.revalidation.revalidations_total == 1


# -- which tables a forwarded packet meets: the pure decision ---------------------------
@pytest.mark.parametrize(("family", "hooks", "want"), [
    ("inet", {"input"}, False),
    ("ip", {"input", "output"}, False),
    ("ip6", set(), False),  # regular chains only
    ("inet", {"input", "forward"}, True),
    ("ip", {"prerouting"}, True),
    ("ip6", {"postrouting"}, True),
    ("inet", {"ingress"}, True),
    ("inet", {"a-hook-from-the-future"}, True),
    ("netdev", {"ingress"}, True),
    ("netdev", {"egress"}, True),
    ("bridge", {"input"}, True),  # bridge input is still a bridged packet's path
    ("arp", {"input"}, True),  # unknown ground: counts
    ("netdev", set(), False),
])
def test_meets_forwarded(family: str, hooks: set[str], want: bool) -> None:
    assert meets_forwarded(family, hooks) is want


def test_decide_skips_changes_in_tables_no_forwarded_packet_meets() -> None:
    crowdsec = _tx((ELEMENT, ADD, "inet", "crowdsec"))
    admin = _tx((ELEMENT, ADD, "inet", "admin"))
    both = _tx((ELEMENT, ADD, "inet", "crowdsec"), (ELEMENT, ADD, "inet", "admin"))
    own = _tx((ELEMENT, ADD, "inet", "crowdsec"), pid=5)

    def reaches(family: str, table: str) -> bool:
        return table != "crowdsec"

    got = decide(_batch(crowdsec, admin, both, own), *OWN, 5, reaches)
    assert got.triggers == ("1 element added in inet admin by nft[77]",
                            "1 element added in inet admin by nft[77]")
    assert [s.summary for s in got.skipped] == ["1 element added in inet crowdsec by nft[77]"]
    assert got.skipped[0].tables == {("inet", "crowdsec")}
    # An overrun always triggers, whatever the verdicts.
    over = decide(_batch(crowdsec, overrun=True), *OWN, 5, reaches)
    assert over.triggers == (OVERRUN_TRIGGER,) and len(over.skipped) == 1
    # Without verdicts every table counts (as before).
    assert len(decide(_batch(crowdsec), *OWN, 5).triggers) == 1


def test_policy_tables_names_those_whose_hooks_may_have_changed() -> None:
    batch = _batch(_tx((ELEMENT, ADD, "inet", "a"), (ObjectKind.CHAIN, ADD, "ip", "b")),
                   _tx((ObjectKind.TABLE, Verb.DELETE, "inet", "c")),
                   _tx((ObjectKind.CHAIN, ADD, "inet", "mine"), pid=5),
                   _tx((ObjectKind.FLOWTABLE, ADD, "inet", "d")))
    touched, changed = policy_tables(batch, *OWN, 5)
    assert touched == {("inet", "a"), ("ip", "b"), ("inet", "c")}
    assert changed == {("ip", "b"), ("inet", "c")}


def test_base_chain_hooks_from_a_chain_listing() -> None:
    items: list[dict[str, Any]] = [{"metainfo": {}},
             {"chain": {"family": "inet", "table": "cs", "name": "in", "hook": "input",
                        "type": "filter", "prio": -10}},
             {"chain": {"family": "inet", "table": "cs", "name": "helper"}},
             {"chain": {"family": "ip", "table": "nat", "name": "post",
                        "hook": "postrouting"}},
             {"chain": {"family": "ip", "table": "plain", "name": "x"}}]
    assert base_chain_hooks(items) == {("inet", "cs"): frozenset({"input"}),
                                       ("ip", "nat"): frozenset({"postrouting"}),
                                       ("ip", "plain"): frozenset()}


# -- the per-table cache -------------------------------------------------------------------
class Hooks:
    def __init__(self, hooks: dict[tuple[str, str], frozenset[str]]) -> None:
        self.hooks = hooks
        self.reads = 0
        self.fail = False

    def __call__(self) -> dict[tuple[str, str], frozenset[str]]:
        self.reads += 1
        if self.fail:
            raise NftError("nft: cannot list")
        return dict(self.hooks)


INPUT_ONLY = {("inet", "crowdsec"): frozenset({"input"}),
              ("inet", "admin"): frozenset({"forward"})}


def test_the_cache_reads_chains_once_for_a_stream_of_elements() -> None:
    hooks = Hooks(dict(INPUT_ONLY))
    scope = PolicyScope(hooks)
    for _ in range(50):
        reaches = scope.verdicts(_batch(_tx((ELEMENT, ADD, "inet", "crowdsec"))), *OWN, 5)
        assert not reaches("inet", "crowdsec")
    assert hooks.reads == 1
    assert scope.verdicts(_batch(_tx((ELEMENT, ADD, "inet", "admin"))), *OWN, 5)(
        "inet", "admin")
    assert hooks.reads == 1  # admin was listed by the first read


def test_a_table_not_seen_yet_is_read_and_one_without_chains_meets_nothing() -> None:
    hooks = Hooks(dict(INPUT_ONLY))
    scope = PolicyScope(hooks)
    scope.verdicts(_batch(_tx((ELEMENT, ADD, "inet", "admin"))), *OWN, 5)
    reaches = scope.verdicts(_batch(_tx((ELEMENT, ADD, "ip", "setsonly"))), *OWN, 5)
    assert hooks.reads == 2 and not reaches("ip", "setsonly")


def test_a_chain_change_reads_again_and_counts_before_or_after() -> None:
    hooks = Hooks(dict(INPUT_ONLY))
    scope = PolicyScope(hooks)
    scope.verdicts(_batch(_tx((ELEMENT, ADD, "inet", "crowdsec"))), *OWN, 5)
    # A forward chain added to the bouncer's table: from now on it counts.
    hooks.hooks[("inet", "crowdsec")] = frozenset({"input", "forward"})
    batch = _batch(_tx((ObjectKind.CHAIN, ADD, "inet", "crowdsec"),
                       (ELEMENT, ADD, "inet", "crowdsec")))
    assert scope.verdicts(batch, *OWN, 5)("inet", "crowdsec")
    assert hooks.reads == 2
    # The forward chain deleted: this change counts (it was reachable before) ...
    hooks.hooks[("inet", "crowdsec")] = frozenset({"input"})
    assert scope.verdicts(_batch(_tx((ObjectKind.CHAIN, Verb.DELETE, "inet", "crowdsec"))),
                          *OWN, 5)("inet", "crowdsec")
    # ... the next ones do not.
    assert not scope.verdicts(_batch(_tx((ELEMENT, ADD, "inet", "crowdsec"))), *OWN, 5)(
        "inet", "crowdsec")
    # An input-only table's own chain changes need none either.
    assert not scope.verdicts(_batch(_tx((ObjectKind.CHAIN, ADD, "inet", "crowdsec"))),
                              *OWN, 5)("inet", "crowdsec")
    assert hooks.reads == 4


def test_an_overrun_or_a_failed_read_counts_everything_until_read_again() -> None:
    hooks = Hooks(dict(INPUT_ONLY))
    scope = PolicyScope(hooks)
    elem = _batch(_tx((ELEMENT, ADD, "inet", "crowdsec")))
    assert not scope.verdicts(elem, *OWN, 5)("inet", "crowdsec")
    assert scope.verdicts(_batch(overrun=True), *OWN, 5)("inet", "crowdsec")
    assert scope.reaches("inet", "crowdsec") is None
    hooks.fail = True
    assert scope.verdicts(elem, *OWN, 5)("inet", "crowdsec")
    hooks.fail = False
    assert not scope.verdicts(elem, *OWN, 5)("inet", "crowdsec")


def test_a_table_first_seen_being_deleted_counts() -> None:
    scope = PolicyScope(Hooks({}))
    assert scope.verdicts(_batch(_tx((ObjectKind.TABLE, Verb.DELETE, "inet", "gone"))),
                          *OWN, 5)("inet", "gone")


# -- the daemon: skipped, counted, logged once per table ---------------------------------
def test_the_daemon_skips_input_only_churn_and_counts_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d, b = _daemon(tmp_path, FakeBackend(hooks=dict(INPUT_ONLY)))
    d.reconcile()
    batches = [_batch(_tx((ELEMENT, ADD, "inet", "crowdsec"))) for _ in range(10)]
    batches.append(_batch(_tx((ELEMENT, ADD, "inet", "admin"))))

    class Source:
        async def changes(self):  # type: ignore[no-untyped-def]
            for batch in batches:
                yield batch

    async def go() -> None:
        d._nft_changes = Source()
        # The stream's end is an error: its supervisor restarts the watcher.
        with pytest.raises(OffloaddError, match="change stream ended"):
            await d._consume_nft_changes()

    with caplog.at_level(logging.INFO, logger="offloadd"):
        asyncio.run(go())
    assert d.status.revalidation.policy_changes_skipped_total == 10
    assert d.status.revalidation.policy_changes_total == 1
    assert b.hook_reads == 1
    pending = d.revalidator._schedule.pending
    assert pending is not None and pending.triggers == ("1 element added in inet admin by nft[77]",)
    skips = [r for r in caplog.records if "not re-validated" in r.getMessage()]
    assert len(skips) == 1 and "inet crowdsec" in skips[0].getMessage()
    rv = status_report(d.status, "offloadd", "inet", b.state)["revalidate"]
    assert rv["policy_changes_skipped_total"] == 10
    assert "10 more skipped" in format_revalidate(rv)


# -- the kernel's hook list (for a daemon that may not read /proc/net) ------------------
def _nla(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def _hook_msg(prio: int, function: str, module: str = "", chain: bool = False) -> bytes:
    attrs = (_nla(1, struct.pack(">I", 2)) + _nla(2, struct.pack(">i", prio))
             + _nla(4, function.encode() + b"\0"))
    if module:
        attrs += _nla(5, module.encode() + b"\0")
    if chain:
        attrs += _nla(6, _nla(1, b"x\0\0\0"))
    body = struct.pack("=BBH", 2, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), 12 << 8, 2, 1, 0) + body


def test_the_hook_dump_is_parsed_and_legacy_hooks_named_by_priority() -> None:
    done = struct.pack("=IHHII", 20, 3, 2, 1, 0) + b"\0" * 4
    chunks = [_hook_msg(-150, "iptable_mangle_hook", "iptable_mangle")
              + _hook_msg(0, "ipt_do_table", "ip_tables"),
              _hook_msg(5, "nft_do_chain_ipv4", "nf_tables", chain=True)
              + _hook_msg(-225, "selinux_ip_forward") + done]
    hooks, complete = xtables.parse_hooks(chunks)
    assert complete and [h.priority for h in hooks] == [-150, 0, 5, -225]
    assert hooks[2].nftables and not hooks[1].nftables
    assert xtables.parse_hooks(chunks[:1]) == (hooks[:2], False)
    got = from_forward_hooks(hooks, [Hook(50, "ip6t_do_table", "ip6_tables")])
    assert got.ipv4 == {"mangle", "filter"} and got.ipv6 == {"security"}
    assert got.forward_hooks() == {"ip filter": 0, "ip mangle": -150, "ip6 security": 50,
                                   "ip hook selinux_ip_forward": -225}
    assert got.forward_priorities() == [-225, -150, 0, 50]


def test_an_error_answer_raises() -> None:
    err = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -95) + b"\0" * 16
    with pytest.raises(OSError, match="Errno 95"):
        xtables.parse_hooks([err])


def test_the_reader_falls_back_to_the_hook_list(tmp_path: Path) -> None:
    (tmp_path / "ip_tables_names").mkdir()  # unreadable, as for a dynamic user

    def listed(fam: socket.AddressFamily) -> list[Hook]:
        return [Hook(0, "ipt_do_table", "ip_tables")] if fam == socket.AF_INET else []
    assert legacy_tables(tmp_path, listed) == LegacyTables(ipv4=frozenset({"filter"}))
    got = legacy_tables(tmp_path, _no_hook_list)
    assert "ip_tables_names" in got.unreadable and "Invalid argument" in got.unreadable
