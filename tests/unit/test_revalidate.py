"""Re-validation after others' ruleset changes: what triggers it, when it runs,
the change stream's parsing, and the Revalidator on fakes."""

from __future__ import annotations

import asyncio
import itertools
import struct
from dataclasses import replace
from pathlib import Path

import pytest

from offloadd.cli.format import format_revalidate
from offloadd.core.configparse import parse_config
from offloadd.core.errors import OffloaddError
from offloadd.core.gate import PASSED_SIZE
from offloadd.core.model import Link, SetKind
from offloadd.core.plan import (
    CreateChain,
    CreateFlowtable,
    CreateSet,
    DeleteChain,
    DeleteFlowtable,
    DeleteSet,
)
from offloadd.core.revalidate import (
    OVERRUN_TRIGGER,
    NftChanges,
    ObjectKind,
    RevalidatePolicy,
    Schedule,
    TableChange,
    Transaction,
    Verb,
    announces_own,
    needs_reconcile,
    policy_trigger,
    triggers,
)
from offloadd.kernel.nftwatch import TransactionReader
from offloadd.service.daemon import Daemon
from offloadd.service.report import status_report
from tests.unit.fakes import FakeBackend, FakeLinks

OWN = ("inet", "offloadd")
PID = 4242


def _tx(*changes: tuple[ObjectKind, Verb, str, str], pid: int = 77,
        proc: str = "nft") -> Transaction:
    return Transaction(tuple(TableChange(*c) for c in changes), pid, proc)


RULE_IN_ADMIN = (ObjectKind.RULE, Verb.ADD, "inet", "admin")


# -- what triggers a re-validation ------------------------------------------------------

def test_a_rule_added_by_someone_else_in_another_table_triggers() -> None:
    assert policy_trigger(_tx(RULE_IN_ADMIN), *OWN, PID) == "1 rule added in inet admin by nft[77]"


def test_offloadds_own_transactions_never_trigger() -> None:
    assert policy_trigger(_tx(RULE_IN_ADMIN, pid=PID), *OWN, PID) is None
    # its device changes, whoever the kernel names as committer
    own = _tx((ObjectKind.ELEMENT, Verb.ADD, "inet", "offloadd"),
              (ObjectKind.FLOWTABLE, Verb.ADD, "inet", "offloadd"), pid=1)
    assert policy_trigger(own, *OWN, PID) is None


def test_a_table_of_the_same_name_in_another_family_is_not_offloadds() -> None:
    tx = _tx((ObjectKind.RULE, Verb.ADD, "ip", "offloadd"))
    assert policy_trigger(tx, *OWN, PID) == "1 rule added in ip offloadd by nft[77]"


def test_another_tables_flowtable_is_not_policy() -> None:
    assert policy_trigger(_tx((ObjectKind.FLOWTABLE, Verb.ADD, "inet", "fw")), *OWN, PID) is None


def test_every_policy_kind_triggers_and_deletions_too() -> None:
    for kind in (ObjectKind.TABLE, ObjectKind.CHAIN, ObjectKind.RULE, ObjectKind.SET,
                 ObjectKind.ELEMENT, ObjectKind.OBJECT):
        for verb in Verb:
            assert policy_trigger(_tx((kind, verb, "ip", "filter")), *OWN, PID) is not None


def test_the_trigger_summarises_a_burst_of_elements() -> None:
    elems = [(ObjectKind.ELEMENT, Verb.ADD, "inet", "admin")] * 1000
    tx = _tx(*elems, (ObjectKind.RULE, Verb.DELETE, "inet", "admin"), proc="crowdsec")
    assert policy_trigger(tx, *OWN, PID) == ("1000 elements added in inet admin, 1 rule deleted "
                                             "in inet admin by crowdsec[77]")


def test_an_overrun_triggers_and_wakes_a_reconcile() -> None:
    batch = NftChanges((), overrun=True)
    assert triggers(batch, *OWN, PID) == [OVERRUN_TRIGGER]
    assert needs_reconcile(batch, *OWN, PID)
    own = NftChanges((_tx(RULE_IN_ADMIN, pid=PID),))
    assert triggers(own, *OWN, PID) == [] and not needs_reconcile(own, *OWN, PID)


def test_only_others_changes_of_offloadds_own_table_announce_drift() -> None:
    def announces(*changes: tuple[ObjectKind, Verb, str, str], pid: int = 77) -> bool:
        return announces_own(NftChanges((_tx(*changes, pid=pid),)), *OWN, PID)

    assert announces((ObjectKind.TABLE, Verb.DELETE, "inet", "offloadd"))
    assert announces((ObjectKind.RULE, Verb.DELETE, "inet", "offloadd"))
    assert not announces((ObjectKind.CHAIN, Verb.ADD, "ip", "admin"))  # wakes, announces not
    assert not announces((ObjectKind.RULE, Verb.ADD, "inet", "offloadd"), pid=PID)  # ours
    assert announces_own(NftChanges((), overrun=True), *OWN, PID)  # may have lost one


def test_only_chains_tables_and_offloadds_own_table_wake_a_reconcile() -> None:
    def wakes(*changes: tuple[ObjectKind, Verb, str, str]) -> bool:
        return needs_reconcile(NftChanges((_tx(*changes),)), *OWN, PID)

    assert wakes((ObjectKind.CHAIN, Verb.ADD, "ip", "admin"))  # may move offloadd's chain
    assert wakes((ObjectKind.TABLE, Verb.DELETE, "inet", "offloadd"))
    assert wakes((ObjectKind.RULE, Verb.DELETE, "inet", "offloadd"))  # someone edits ours
    assert not wakes((ObjectKind.ELEMENT, Verb.ADD, "inet", "admin"))  # a blocklist burst
    assert not wakes(RULE_IN_ADMIN)


# -- when it runs ----------------------------------------------------------------------

P = RevalidatePolicy()


def _runs(change_times: list[float], until: float, step: float = 0.01) -> list[float]:
    """Drives the schedule as the Revalidator does; returns when re-validations ran."""
    sched, runs, t, i = Schedule(), [], 0.0, 0
    while t <= until:
        while i < len(change_times) and change_times[i] <= t:
            sched = sched.changed(change_times[i], "x")
            i += 1
        due = sched.due_at(P)
        if due is not None and due <= t:
            runs.append(round(t, 2))
            sched = sched.ran(t, P)
        t = round(t + step, 2)
    return runs


def test_a_lone_change_runs_after_the_quiet_time() -> None:
    assert _runs([5.0], 10) == [5.1]


def test_a_script_of_a_few_commands_is_one_run() -> None:
    assert _runs([5.0, 5.03, 5.06], 10) == [5.16]


def _latencies(changes: list[float], runs: list[float]) -> list[float]:
    return [round(min(r for r in runs if r >= c) - c, 2) for c in changes]


def test_an_admin_typing_a_few_commands_gets_each_applied_within_a_second() -> None:
    changes = [1.0, 1.5, 2.7, 3.1, 3.3]
    runs = _runs(changes, 10)
    assert max(_latencies(changes, runs)) <= 1.0
    assert len(runs) < len(changes)


def test_changes_that_keep_coming_are_applied_within_the_burst_interval() -> None:
    changes = [i * 0.45 for i in range(40)]  # 18 s of changes, each a lone command
    runs = _runs(changes, 25)
    assert max(_latencies(changes, runs)) <= P.burst_interval_s
    assert len(runs) <= 18 / P.burst_interval_s + P.burst_after + 1


def test_ten_thousand_updates_over_ten_seconds_cost_at_most_ten_runs() -> None:
    changes = [i * 0.001 for i in range(10_000)]  # a blocklist tool, 1000/s
    runs = _runs(changes, 15)
    assert len(runs) <= 10
    assert runs[-1] >= changes[-1]  # the last update is covered
    assert max(b - a for a, b in itertools.pairwise(runs)) <= P.burst_interval_s + 0.02


def test_the_pace_comes_back_after_a_calm_period() -> None:
    burst = [i * 0.05 for i in range(100)]  # 5 s of changes
    runs = _runs([*burst, 20.0], 25)
    assert runs[-1] == 20.1


# -- the change stream, as the kernel sends it -----------------------------------------

def _attr(kind: int, value: bytes) -> bytes:
    body = struct.pack("=HH", 4 + len(value), kind) + value
    return body + b"\0" * (-len(body) % 4)


def _msg(msg: int, family: int, *attrs: bytes) -> bytes:
    payload = struct.pack("=BBH", family, 0, 0) + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(payload), (10 << 8) | msg, 0, 0, 0) + payload


def test_the_reader_turns_messages_into_transactions() -> None:
    rule = _msg(6, 1, _attr(1, b"admin\0"), _attr(2, b"fw\0"))
    elem = _msg(12, 2, _attr(1, b"filter\0"))
    gen = _msg(15, 0, _attr(1, struct.pack(">I", 9)), _attr(2, struct.pack(">I", 1234)),
               _attr(3, b"fail2ban\0"))
    reader = TransactionReader()
    assert reader.feed(rule + elem) == []  # no NEWGEN yet: still open
    (tx,) = reader.feed(gen)
    assert tx == Transaction((TableChange(ObjectKind.RULE, Verb.ADD, "inet", "admin"),
                              TableChange(ObjectKind.ELEMENT, Verb.ADD, "ip", "filter")),
                             1234, "fail2ban")
    destroy = _msg(28, 10, _attr(1, b"t6\0"))
    (tx2,) = reader.feed(destroy + gen)
    assert tx2.changes == (TableChange(ObjectKind.RULE, Verb.DELETE, "ip6", "t6"),)


def test_the_reader_skips_what_it_does_not_know() -> None:
    other_subsys = struct.pack("=IHHII", 20, (1 << 8) | 0, 0, 0, 0) + b"\0" * 4
    truncated = struct.pack("=IHHII", 16, (10 << 8) | 6, 0, 0, 0)  # no nfgenmsg
    gen = _msg(15, 0)
    (tx,) = TransactionReader().feed(other_subsys + truncated + gen)
    assert tx.changes == () and tx.pid == 0 and tx.by == "an unknown process"


# -- the Revalidator on fakes ----------------------------------------------------------

CONFIG = '[[flowtable]]\nname = "ft"\ndevices = ["lan*", "wan*"]\n'


def _daemon(tmp_path: Path, extra: str = "") -> tuple[Daemon, FakeBackend]:
    path = tmp_path / "offloadd.toml"
    path.write_text(extra + CONFIG)
    b = FakeBackend()
    d = Daemon(path, parse_config(extra + CONFIG), b, links=FakeLinks())
    d.status.links = (Link(1, "lan0", "veth"), Link(2, "wan0", "veth"))
    d.reconcile()
    return d, b


def test_a_change_replaces_the_flowtables_in_one_batch_and_reports_it(tmp_path: Path) -> None:
    d, b = _daemon(tmp_path)
    before, applied = b.state, len(b.applied)
    d.revalidator.changed("1 rule added in inet admin by nft[77]")
    assert d.revalidator.revalidate()
    assert b.state == before and len(b.applied) == applied + 1
    # The gate's sets are replaced (empty) with it: each direction must pass
    # again; deleted and created, never flushed (one message per element).
    ops = b.applied[-1].ops
    assert ops[:2] == (DeleteChain(), DeleteFlowtable("ft"))
    assert ops[2:4] == (DeleteSet("passed_original"), DeleteSet("passed_reply"))
    assert isinstance(ops[4], CreateFlowtable)
    assert ops[5:7] == (CreateSet("passed_original", SetKind.PASSED, PASSED_SIZE),
                        CreateSet("passed_reply", SetKind.PASSED, PASSED_SIZE))
    assert isinstance(ops[7], CreateChain) and len(ops) == 8
    counts = d.status.revalidation
    assert counts.revalidations_total == 1 and counts.policy_changes_total == 1
    last = d.status.revalidation.last
    assert last is not None and last["flowtables"] == ["ft"]
    assert last["trigger"] == "1 rule added in inet admin by nft[77]"
    assert not d.revalidator.revalidate()  # nothing pending any more


def test_a_revalidation_keeps_a_gate_larger_than_desired(tmp_path: Path) -> None:
    # Made larger by hand (or before nf_conntrack_max was lowered): the sets
    # come back empty, as large as they were.
    d, b = _daemon(tmp_path)
    assert b.state is not None
    b.state = replace(b.state, sets=tuple(
        replace(s, size=4 * PASSED_SIZE) if s.kind is SetKind.PASSED else s
        for s in b.state.sets))
    d.revalidator.changed("1 rule added in inet admin by nft[77]")
    assert d.revalidator.revalidate()
    created = [op for op in b.applied[-1].ops if isinstance(op, CreateSet)]
    assert created == [CreateSet("passed_original", SetKind.PASSED, 4 * PASSED_SIZE),
                       CreateSet("passed_reply", SetKind.PASSED, 4 * PASSED_SIZE)]
    assert b.state is not None and b.state.passed_size == 4 * PASSED_SIZE


def test_revalidate_off_counts_the_change_and_replaces_nothing(tmp_path: Path) -> None:
    d, b = _daemon(tmp_path, '[daemon]\nrevalidate = "off"\n')
    applied = len(b.applied)
    d.revalidator.changed("1 rule added in inet admin by nft[77]")
    assert not d.revalidator.revalidate() and d.revalidator.due_at() is None
    assert len(b.applied) == applied and d.status.revalidation.policy_changes_total == 1


def test_it_waits_while_the_table_is_out_of_sync(tmp_path: Path) -> None:
    d, b = _daemon(tmp_path)
    b.state = None  # e.g. `nft flush ruleset`: the reconcile comes first
    d.revalidator.changed("x")
    assert not d.revalidator.revalidate() and b.state is None
    assert d.revalidator.due_at() is not None  # still pending: tried again shortly


def test_a_refused_replacement_keeps_the_state_and_is_retried(tmp_path: Path) -> None:
    d, b = _daemon(tmp_path)
    before = b.state
    b.refuse_all = "Device or resource busy"
    d.revalidator.changed("x")
    assert not d.revalidator.revalidate()
    assert b.state == before and "re-validation failed" in d.status.last_error
    b.refuse_all = ""
    assert d.revalidator.revalidate() and d.status.revalidation.revalidations_total == 1


def test_the_daemon_feeds_others_changes_and_ignores_its_own(tmp_path: Path) -> None:
    d, b = _daemon(tmp_path)
    b.hooks = {("inet", "admin"): frozenset({"forward"})}
    own = _tx((ObjectKind.RULE, Verb.ADD, "inet", "offloadd"), pid=5)
    theirs = _tx(RULE_IN_ADMIN)

    class Source:
        async def changes(self):  # type: ignore[no-untyped-def]
            yield NftChanges((own,))
            yield NftChanges((theirs,))

    async def go() -> None:
        d._nft_changes = Source()
        d._own_pid = 5
        # The stream's end is an error: its supervisor restarts the watcher.
        with pytest.raises(OffloaddError, match="change stream ended"):
            await d._consume_nft_changes()

    asyncio.run(go())
    assert d.status.revalidation.policy_changes_total == 1
    pending = d.revalidator._schedule.pending
    assert pending is not None and pending.triggers == ("1 rule added in inet admin by nft[77]",)


def test_status_report_and_offloadctl_line(tmp_path: Path) -> None:
    d, b = _daemon(tmp_path)
    d.revalidator.changed("1 rule added in inet admin by nft[77]")
    d.revalidator.revalidate()
    rv = status_report(d.status, "offloadd", "inet", b.state)["revalidate"]
    assert rv["mode"] == "on-change" and rv["revalidations_total"] == 1
    line = format_revalidate(rv)
    assert line.startswith("revalidate (on-change): 1 re-validation(s) for 1 ruleset change(s)")
    assert "after 1 rule added in inet admin by nft[77]" in line
    off = format_revalidate({**rv, "mode": "off"})
    assert "do NOT meet rules" in off
