"""When others change the ruleset, offloaded flows must meet the new policy.

Why: an offloaded flow's packets skip the forward chains, so a drop rule or a
blocklist element added after the flow was offloaded never sees it. Replacing
offloadd's flowtables tears every flow down; each one's next packet goes
through the forward chains again, meets the policy as it is now, and is
offloaded again if it still passes (same conntrack entry, same NAT mapping).

This module is the pure part: which committed nf_tables transactions call for
that (changes by others outside offloadd's table), and when to run it so that
a lone change is applied at once and a burst (a blocklist tool adding
thousands of elements) costs a bounded number of replacements.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass


class ObjectKind(enum.Enum):
    TABLE = "table"
    CHAIN = "chain"
    RULE = "rule"
    SET = "set"
    ELEMENT = "element"
    OBJECT = "object"  # named objects: counters, quotas, limits, ct helpers
    FLOWTABLE = "flowtable"


class Verb(enum.Enum):
    ADD = "added"
    DELETE = "deleted"


@dataclass(frozen=True)
class TableChange:
    """One object an nf_tables transaction added or deleted, and its table."""

    kind: ObjectKind
    verb: Verb
    family: str
    table: str


@dataclass(frozen=True)
class Transaction:
    """A committed nf_tables transaction: its changes and who committed it."""

    changes: tuple[TableChange, ...]
    pid: int = 0
    process: str = ""

    @property
    def by(self) -> str:
        return f"{self.process or '?'}[{self.pid}]" if self.pid else "an unknown process"


@dataclass(frozen=True)
class NftChanges:
    """What one read of the change stream brought: whole transactions, or an
    overrun (the kernel dropped messages: who changed what is unknown)."""

    transactions: tuple[Transaction, ...]
    overrun: bool = False


OVERRUN_TRIGGER = "nftables changes that were missed (netlink receive buffer overrun)"


# Kinds that can change what the forward path lets through. Another table's
# flowtable does not: its devices are not offloadd's, and the flows it takes
# are not offloadd's either.
POLICY_KINDS = frozenset(ObjectKind) - {ObjectKind.FLOWTABLE}


# Base chain hooks of ip, ip6 and inet tables that no forwarded packet passes
# (locally delivered and locally sent packets only).
LOCAL_HOOKS = frozenset({"input", "output"})
_IP_FAMILIES = frozenset({"ip", "ip6", "inet"})

Table = tuple[str, str]  # (family, name)


def meets_forwarded(family: str, hooks: Iterable[str]) -> bool:
    """Whether a table whose base chains hook ``hooks`` can meet a forwarded packet.

    A rule jumps or goes only to chains of its own table, and a rule names only
    its own table's sets, maps and objects: a table none of whose base chains
    a forwarded packet passes cannot change what is forwarded, whatever its
    rules and elements say (crowdsec's and fail2ban's input-only tables).
    Conservative: every hook but input and output of ip/ip6/inet counts
    (prerouting, forward, postrouting, ingress, and any hook not known here),
    and so does every base chain of any other family (netdev ingress/egress,
    bridge, arp). A table with no base chain meets nothing.
    """
    hooked = set(hooks)
    if family in _IP_FAMILIES:
        return bool(hooked - LOCAL_HOOKS)
    return bool(hooked)


def _everywhere(_family: str, _table: str) -> bool:
    return True


def _summary(relevant: Sequence[TableChange], tx: Transaction) -> str:
    counts: dict[tuple[ObjectKind, Verb, str, str], int] = {}
    for c in relevant:
        key = (c.kind, c.verb, c.family, c.table)
        counts[key] = counts.get(key, 0) + 1
    parts = [f"{n} {kind.value}{'s' if n > 1 else ''} {verb.value} in {fam} {table}"
             for (kind, verb, fam, table), n in sorted(
                 counts.items(), key=lambda kv: (-kv[1], kv[0][0].value, kv[0][2], kv[0][3]))]
    shown = ", ".join(parts[:3]) + (f" and {len(parts) - 3} more" if len(parts) > 3 else "")
    return f"{shown} by {tx.by}"


def _others(tx: Transaction, own_family: str, own_table: str,
            own_pid: int) -> list[TableChange]:
    """The policy changes of a transaction by someone else, outside offloadd's table.

    offloadd's own transactions never count (its device changes do not change
    what the policy allows). Changes to offloadd's own table by someone else
    are undone by the next reconcile, not re-validated.
    """
    if own_pid and tx.pid == own_pid:
        return []
    return [c for c in tx.changes
            if c.kind in POLICY_KINDS and (c.family, c.table) != (own_family, own_table)]


def policy_trigger(tx: Transaction, own_family: str, own_table: str, own_pid: int,
                   reaches: Callable[[str, str], bool] = _everywhere) -> str | None:
    """What in this transaction calls for a re-validation, in words; None if nothing.

    ``reaches(family, table)``: whether that table can meet a forwarded packet
    (meets_forwarded); changes in tables that cannot are left out.
    """
    relevant = [c for c in _others(tx, own_family, own_table, own_pid)
                if reaches(c.family, c.table)]
    return _summary(relevant, tx) if relevant else None


def policy_tables(changes: NftChanges, own_family: str, own_table: str,
                  own_pid: int) -> tuple[set[Table], set[Table]]:
    """The tables others' policy changes touched, and those among them whose
    tables or chains were added or deleted (their hooks may have changed)."""
    touched: set[Table] = set()
    hooks_changed: set[Table] = set()
    for tx in changes.transactions:
        for c in _others(tx, own_family, own_table, own_pid):
            touched.add((c.family, c.table))
            if c.kind in (ObjectKind.TABLE, ObjectKind.CHAIN):
                hooks_changed.add((c.family, c.table))
    return touched, hooks_changed


@dataclass(frozen=True)
class Skipped:
    """A transaction by others left out: no forwarded packet meets its tables."""

    summary: str
    tables: frozenset[Table]


@dataclass(frozen=True)
class Decision:
    """What one read of the change stream calls for: re-validation triggers, and
    the transactions by others that were left out."""

    triggers: tuple[str, ...] = ()
    skipped: tuple[Skipped, ...] = ()


def decide(changes: NftChanges, own_family: str, own_table: str, own_pid: int,
           reaches: Callable[[str, str], bool] = _everywhere) -> Decision:
    """Triggers and skipped transactions in one read of the change stream; an
    overrun always triggers (what changed where is unknown)."""
    found: list[str] = [OVERRUN_TRIGGER] if changes.overrun else []
    skipped: list[Skipped] = []
    for tx in changes.transactions:
        others = _others(tx, own_family, own_table, own_pid)
        if not others:
            continue
        relevant = [c for c in others if reaches(c.family, c.table)]
        if relevant:
            found.append(_summary(relevant, tx))
        else:
            skipped.append(Skipped(_summary(others, tx),
                                   frozenset((c.family, c.table) for c in others)))
    return Decision(tuple(found), tuple(skipped))


def triggers(changes: NftChanges, own_family: str, own_table: str,
             own_pid: int) -> list[str]:
    """The re-validation triggers in one read of the change stream (every table counts)."""
    return list(decide(changes, own_family, own_table, own_pid).triggers)


# What can move offloadd's forward chain (other tables' base chains) or undo its
# own state; rules and elements cannot, so a blocklist burst costs no reconciles.
RECONCILE_KINDS = frozenset({ObjectKind.TABLE, ObjectKind.CHAIN, ObjectKind.FLOWTABLE})


def needs_reconcile(changes: NftChanges, own_family: str, own_table: str,
                    own_pid: int) -> bool:
    """Whether someone else changed what a reconcile reads: other tables' chains,
    or anything in offloadd's own table (which the reconcile then restores)."""
    if changes.overrun:
        return True
    return any(c.kind in RECONCILE_KINDS or (c.family, c.table) == (own_family, own_table)
               for tx in changes.transactions if not (own_pid and tx.pid == own_pid)
               for c in tx.changes)


def announces_own(changes: NftChanges, own_family: str, own_table: str, own_pid: int) -> bool:
    """Whether someone else's change of offloadd's own table was reported (an
    overrun may have lost one): what the next pass restores was announced."""
    if changes.overrun:
        return True
    return any((c.family, c.table) == (own_family, own_table)
               for tx in changes.transactions if not (own_pid and tx.pid == own_pid)
               for c in tx.changes)


@dataclass(frozen=True)
class RevalidatePolicy:
    """How soon after a change, and how often at most.

    quiet_s: a lone change waits this long for the rest of its burst (a
    script running several nft commands), so one replacement covers them.
    interval_s: at least this long between two re-validations.
    burst_interval_s: once burst_after re-validations in a row each had the
    next change come within interval_s (changes keep coming), the pace drops to
    this, so a blocklist tool adding elements for a minute costs one
    replacement per burst_interval_s, not one per command; an admin typing a
    few commands still gets each applied within a second.
    """

    quiet_s: float = 0.1
    interval_s: float = 1.0
    burst_interval_s: float = 2.0
    burst_after: int = 3


@dataclass(frozen=True)
class Pending:
    """Changes not yet re-validated: since when, the latest, and what they were."""

    first_at: float
    last_at: float
    triggers: tuple[str, ...]
    count: int


@dataclass(frozen=True)
class Schedule:
    """The coalescing state between changes and re-validations (immutable)."""

    pending: Pending | None = None
    last_run_at: float | None = None
    burst_runs: int = 0  # runs in a row whose next change came within interval_s

    def changed(self, at: float, trigger: str) -> Schedule:
        p = self.pending
        if p is None:
            return Schedule(Pending(at, at, (trigger,), 1), self.last_run_at, self.burst_runs)
        keep = trigger in p.triggers or len(p.triggers) >= MAX_TRIGGERS
        triggers = p.triggers if keep else (*p.triggers, trigger)
        return Schedule(Pending(p.first_at, at, triggers, p.count + 1),
                        self.last_run_at, self.burst_runs)

    def _natural(self, policy: RevalidatePolicy) -> float | None:
        p = self.pending
        if p is None:
            return None
        # Changes that never pause for quiet_s are still served within interval_s.
        return min(p.last_at + policy.quiet_s, p.first_at + policy.interval_s)

    def _earliest(self, policy: RevalidatePolicy) -> float | None:
        if self.last_run_at is None:
            return None
        burst = self.burst_runs >= policy.burst_after
        return self.last_run_at + (policy.burst_interval_s if burst else policy.interval_s)

    def due_at(self, policy: RevalidatePolicy) -> float | None:
        """When the pending changes are to be re-validated; None if none are."""
        natural = self._natural(policy)
        if natural is None:
            return None
        earliest = self._earliest(policy)
        return natural if earliest is None else max(natural, earliest)

    def ran(self, at: float, policy: RevalidatePolicy) -> Schedule:
        """The pending changes were re-validated at `at`."""
        p = self.pending
        going_on = (p is not None and self.last_run_at is not None
                    and p.first_at - self.last_run_at < policy.interval_s)
        return Schedule(None, at, self.burst_runs + 1 if going_on else 0)


MAX_TRIGGERS = 3


def coverage(on_change: bool) -> tuple[list[str], list[str]]:
    """What re-validation covers and what it does not, for ``offloadctl check``."""
    if not on_change:
        return [], ["revalidate = \"off\": a rule or set element added after a flow was "
                    "offloaded never sees it; the flow keeps going until it ends"]
    covered = [
        "rules, chains, sets, set elements, tables and named objects that anyone but "
        "offloadd adds or deletes in any other table (nft, iptables-nft, firewalld, "
        "fail2ban, crowdsec): offloaded flows meet the new policy at their next packet, "
        "~0.1 s after a lone change, at most 2 s into a burst of changes",
        "rules that match one direction only (ip daddr X drop, iifname wan0 drop): a flow "
        "is offloaded again only once a packet of each direction has passed the forward "
        "chains since the change, so the other direction's packets cannot carry it past "
        "the rule",
        "hardware-offloaded flows: replacing the flowtable removes their entries from the "
        "device too (not tested in the lab: it has no offload-capable NIC)",
        "changes to a table whose base chains hook only input or output (crowdsec, "
        "fail2ban): no forwarded packet meets them, so they cost no re-validation "
        "(counted as skipped)",
        "iptables-legacy tables: with priority = \"auto\" offloadd's forward chain runs "
        "after their FORWARD hooks, so a flow is offloaded only after they let both "
        "directions pass",
    ]
    not_covered = [
        "rules that act on every packet (quota, limit, counters, meta hour/day): offloaded "
        "packets skip the forward chains, so they see a flow only until it is offloaded",
        "sets a rule fills from the packet path (add/update @set, meters): the kernel sends "
        "no change event for those elements",
        "iptables-legacy (xtables) rule changes and sysctl changes: they are not nf_tables "
        "transactions; after changing legacy rules run `offloadctl revalidate` (a legacy "
        "table that appears is noticed within 2 s and re-validates by itself)",
        "base chains on the postrouting hook (nft or legacy mangle POSTROUTING): they run "
        "after offloadd's forward chain, so a drop there does not keep a flow from being "
        "offloaded",
        "routing changes (ip route/rule, blackhole routes): the kernel's own route check "
        "decides when an offloaded flow's route is stale",
        "the moment between a change and the replacement (see above): packets of flows "
        "already offloaded still pass then",
    ]
    return covered, not_covered
