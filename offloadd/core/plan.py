"""Diff desired against current table state into an ordered list of operations.

Why: the smallest change is what keeps offloaded flows alive (a device added
must not recreate the chain or the flowtable), and an explicit, ordered plan
can be rendered as one atomic nft batch, logged, and checked by a pure
simulator (`offloadd.core.simulate`) that refuses what the kernel would refuse.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from offloadd.core.model import ChainState, FlowtableState, SetKind, SetState, TableState


@dataclass(frozen=True)
class CreateTable:
    name: str
    family: str


@dataclass(frozen=True)
class DeleteTable:
    name: str
    family: str


@dataclass(frozen=True)
class CreateFlowtable:
    ft: FlowtableState  # created with all of ft.devices


@dataclass(frozen=True)
class AddFlowtableDevices:
    # The whole desired flowtable rides along: re-sending a flowtable
    # statement replaces its flags, so they must be the desired ones.
    ft: FlowtableState
    devices: frozenset[str]


@dataclass(frozen=True)
class RemoveFlowtableDevices:
    ft: FlowtableState  # its hook priority is needed to name the hooks
    devices: frozenset[str]


@dataclass(frozen=True)
class UpdateFlowtableFlags:
    """Counter changed; hardware and priority cannot change in place."""

    ft: FlowtableState


@dataclass(frozen=True)
class DeleteFlowtable:
    name: str


@dataclass(frozen=True)
class CreateSet:
    name: str
    kind: SetKind = SetKind.IFNAMES
    size: int = 0  # a gate set's (SetState.size)


@dataclass(frozen=True)
class AddSetElements:
    set: str
    elements: frozenset[str]


@dataclass(frozen=True)
class RemoveSetElements:
    set: str
    elements: frozenset[str]


@dataclass(frozen=True)
class DeleteSet:
    name: str


@dataclass(frozen=True)
class DeleteChain:
    """Drop offloadd's forward chain with its rules.

    A chain replacement is DeleteChain early plus CreateChain late in the
    same batch: the old rules must go before a flowtable they reference can
    be deleted (e.g. to flip `flags offload`), the new rules must come after
    what they reference exists. Flowtable entries are not disturbed.
    """


@dataclass(frozen=True)
class CreateChain:
    chain: ChainState


Op = (
    CreateTable
    | DeleteTable
    | CreateFlowtable
    | AddFlowtableDevices
    | RemoveFlowtableDevices
    | UpdateFlowtableFlags
    | DeleteFlowtable
    | CreateSet
    | AddSetElements
    | RemoveSetElements
    | DeleteSet
    | DeleteChain
    | CreateChain
)


@dataclass(frozen=True)
class Plan:
    ops: tuple[Op, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.ops

    @property
    def attached_devices(self) -> frozenset[str]:
        """Devices this plan puts into flowtables (added or in a created one)."""
        return frozenset(d for op in self.ops
                         if isinstance(op, AddFlowtableDevices | CreateFlowtable)
                         for d in (op.devices if isinstance(op, AddFlowtableDevices)
                                   else op.ft.devices))


_FLOW_REF = re.compile(r"\bflow add @([A-Za-z0-9_]+)")
_ANY_REF = re.compile(r"@([A-Za-z0-9_]+)")


def chain_references(chain: ChainState | None) -> tuple[frozenset[str], frozenset[str]]:
    """(flowtables, sets) named by the chain's rules.

    In `flow add @x` x is a flowtable; every other `@y` is a set.
    """
    if chain is None:
        return frozenset(), frozenset()
    fts: set[str] = set()
    sets: set[str] = set()
    for rule in chain.rules:
        flow = set(_FLOW_REF.findall(rule))
        fts |= flow
        sets |= {name for name in _ANY_REF.findall(_FLOW_REF.sub("", rule))}
    return frozenset(fts), frozenset(sets)


def _must_recreate(want: FlowtableState, have: FlowtableState) -> bool:
    # The kernel refuses to change `flags offload` or the hook priority of an
    # existing flowtable (EOPNOTSUPP), so those need delete + create.
    return want.hardware != have.hardware or want.priority != have.priority


@dataclass(frozen=True)
class _FlowtableDiff:
    delete: tuple[str, ...]
    create: tuple[FlowtableState, ...]
    remove: tuple[RemoveFlowtableDevices, ...]
    flags: tuple[UpdateFlowtableFlags, ...]
    add: tuple[AddFlowtableDevices, ...]


def _diff_flowtables(desired: TableState, have: TableState) -> _FlowtableDiff:
    delete: list[str] = []
    for old in have.flowtables:
        wanted = desired.flowtable(old.name)
        if wanted is None or _must_recreate(wanted, old):
            delete.append(old.name)
    create: list[FlowtableState] = []
    remove: list[RemoveFlowtableDevices] = []
    flags: list[UpdateFlowtableFlags] = []
    add: list[AddFlowtableDevices] = []
    for new in desired.flowtables:
        had = have.flowtable(new.name)
        if had is None or _must_recreate(new, had):
            create.append(new)
            continue
        old = had
        if old.devices - new.devices:
            remove.append(RemoveFlowtableDevices(old, old.devices - new.devices))
        if old.counter != new.counter:
            flags.append(UpdateFlowtableFlags(new))
        if new.devices - old.devices:
            add.append(AddFlowtableDevices(new, new.devices - old.devices))
    return _FlowtableDiff(tuple(delete), tuple(create), tuple(remove), tuple(flags), tuple(add))


@dataclass(frozen=True)
class _SetDiff:
    delete: tuple[str, ...]
    create: tuple[CreateSet, ...]
    remove: tuple[RemoveSetElements, ...]
    add: tuple[AddSetElements, ...]


def _diff_sets(desired: TableState, have: TableState) -> _SetDiff:
    create: list[CreateSet] = []
    recreate: list[str] = []
    remove: list[RemoveSetElements] = []
    add: list[AddSetElements] = []
    for new in desired.sets:
        old = have.set(new.name)
        if old is not None and (old.kind != new.kind or _too_small(new, old)):
            # Declared otherwise (another version, a hand edit): a set's type
            # cannot change in place, nor its size.
            recreate.append(new.name)
            old = None
        if old is None:
            create.append(CreateSet(new.name, new.kind, new.size))
            old = SetState(new.name, kind=new.kind)
        if not new.kind.holds_names:
            continue
        if old.elements - new.elements:
            remove.append(RemoveSetElements(new.name, old.elements - new.elements))
        if new.elements - old.elements:
            add.append(AddSetElements(new.name, new.elements - old.elements))
    delete = tuple(s.name for s in have.sets if desired.set(s.name) is None) + tuple(recreate)
    return _SetDiff(delete, tuple(create), tuple(remove), tuple(add))


def _too_small(want: SetState, have: SetState) -> bool:
    """A gate set that holds fewer flows than desired (nf_conntrack_max was
    raised): re-created at the desired size. A larger one (an operator's) is
    kept."""
    return want.kind is SetKind.PASSED and have.size < want.size


def compute_plan(desired: TableState, current: TableState | None) -> Plan:
    """The smallest valid batch turning `current` into `desired`.

    Names and devices come out sorted, so equal inputs give equal plans.
    """
    if current is not None and (current.name, current.family) != (desired.name, desired.family):
        raise ValueError(
            f"current table {current.family} {current.name} is not the desired "
            f"{desired.family} {desired.name}"
        )
    have = current if current is not None else TableState(desired.name, desired.family)
    fts = _diff_flowtables(desired, have)
    sets = _diff_sets(desired, have)
    # The chain is rebuilt when it differs, and also when a flowtable its
    # rules use is recreated: the kernel refuses to delete a flowtable a rule
    # references (EBUSY). The same holds for a set declared otherwise.
    used_fts, used_sets = chain_references(have.chain)
    chain_reset = (have.chain != desired.chain or bool(used_fts & set(fts.delete))
                   or bool(used_sets & set(sets.delete)))

    ops: list[Op] = []
    if current is None:
        ops.append(CreateTable(desired.name, desired.family))
    if chain_reset and have.chain is not None:
        ops.append(DeleteChain())
    # Removals first: a device leaving one flowtable for another must be gone
    # from the first before the second may take it (EEXIST otherwise).
    ops += fts.remove
    ops += sets.remove
    ops += [DeleteFlowtable(name) for name in fts.delete]
    ops += [DeleteSet(name) for name in sets.delete]
    ops += fts.flags
    ops += [CreateFlowtable(ft) for ft in fts.create]
    ops += fts.add
    ops += sets.create
    ops += sets.add
    if chain_reset and desired.chain is not None:
        ops.append(CreateChain(desired.chain))
    return Plan(tuple(ops))


def replace_flowtables_plan(current: TableState, names: Iterable[str], *,
                            forget_passed: bool = False, gate_size: int = 0) -> Plan:
    """Delete and re-create flowtables as they are, in one batch.

    Frees every flow entry they hold (the repair for flows the kernel left
    behind) and nothing else: the same devices, flags and sets come back. The
    chain goes and comes back around them because the kernel refuses to
    delete a flowtable that a rule references (EBUSY). ``forget_passed``
    (after a policy change) also replaces the gate's sets, empty, so a flow
    is offloaded again only once each direction has passed the new policy;
    each comes back at its size or at ``gate_size`` (the desired one),
    whichever is larger, so an operator's larger set stays larger.

    Why replaced and not flushed: a flush sends one notification per element
    (200k ids, 200k messages) to every nf_tables listener, offloadd's own
    event socket among them, which overran (counted as a missed outside
    change: a second re-validation) and held the commit lock for seconds; a
    set's deletion is one message whatever it holds. The chain that uses
    the sets is out of the batch's way already (deleted first, added last).
    """
    fts = [ft for ft in current.flowtables if ft.name in set(names)]
    if not fts:
        return Plan()
    ops: list[Op] = []
    if current.chain is not None:
        ops.append(DeleteChain())
    ops += [DeleteFlowtable(ft.name) for ft in fts]
    passed = [s for s in current.sets if s.kind is SetKind.PASSED] if forget_passed else []
    ops += [DeleteSet(s.name) for s in passed]
    ops += [CreateFlowtable(ft) for ft in fts]
    ops += [CreateSet(s.name, SetKind.PASSED, max(s.size, gate_size)) for s in passed]
    if current.chain is not None:
        ops.append(CreateChain(current.chain))
    return Plan(tuple(ops))


def release_flowtables_plan(current: TableState, names: Iterable[str]) -> Plan:
    """The first half of a replacement in two steps: the flowtables are
    replaced in one batch (as by replace_flowtables_plan), but the chain comes
    back without the rules that add flows to them; ``compute_plan`` brings
    those back later.

    Why two steps: on 7.3 the old flowtable's entries are freed after the
    batch, and a busy flow that the new flowtable took in the meantime loses
    its offload mark again when its old entry goes. Holding the flows on the
    slow path until the old entries are released avoids that; the flowtable
    itself is never absent between transactions.
    """
    plan = replace_flowtables_plan(current, names)
    held = set(names)
    ops: list[Op] = []
    for op in plan.ops:
        if isinstance(op, CreateChain):
            rules = tuple(r for r in op.chain.rules
                          if not set(_FLOW_REF.findall(r)) & held)
            ops.append(CreateChain(ChainState(op.chain.priority, rules)))
        else:
            ops.append(op)
    return Plan(tuple(ops))


def teardown_plan(table_name: str, family: str) -> Plan:
    return Plan((DeleteTable(table_name, family),))
