"""Diff desired against current table state into an ordered list of operations.

Why: the smallest change is what keeps offloaded flows alive (a device added
must not recreate the chain or the flowtable), and an explicit, ordered plan
can be rendered as one atomic nft batch, logged, and checked by a pure
simulator (`apply_plan`) that refuses what the kernel would refuse.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

from offloadd.core.errors import NftError
from offloadd.core.model import CHAIN_NAME, ChainState, FlowtableState, SetState, TableState


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
    name: str  # always `type ifname`


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
    create: tuple[str, ...]
    remove: tuple[RemoveSetElements, ...]
    add: tuple[AddSetElements, ...]


def _diff_sets(desired: TableState, have: TableState) -> _SetDiff:
    create: list[str] = []
    remove: list[RemoveSetElements] = []
    add: list[AddSetElements] = []
    for new in desired.sets:
        old = have.set(new.name)
        if old is None:
            create.append(new.name)
            old = SetState(new.name)
        if old.elements - new.elements:
            remove.append(RemoveSetElements(new.name, old.elements - new.elements))
        if new.elements - old.elements:
            add.append(AddSetElements(new.name, new.elements - old.elements))
    delete = tuple(s.name for s in have.sets if desired.set(s.name) is None)
    return _SetDiff(delete, tuple(create), tuple(remove), tuple(add))


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
    # references (EBUSY). Sets are never recreated, and a deleted set cannot
    # be referenced by an unchanged chain of a consistent desired state.
    used_fts = chain_references(have.chain)[0]
    chain_reset = have.chain != desired.chain or bool(used_fts & set(fts.delete))

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
    ops += [CreateSet(name) for name in sets.create]
    ops += sets.add
    if chain_reset and desired.chain is not None:
        ops.append(CreateChain(desired.chain))
    return Plan(tuple(ops))


def replace_flowtables_plan(current: TableState, names: Iterable[str]) -> Plan:
    """Delete and re-create flowtables as they are, in one batch.

    Frees every flow entry they hold (the repair for flows the kernel left
    behind) and nothing else: the same devices, flags and sets come back. The
    chain goes and comes back around them because the kernel refuses to
    delete a flowtable that a rule references (EBUSY).
    """
    fts = [ft for ft in current.flowtables if ft.name in set(names)]
    if not fts:
        return Plan()
    ops: list[Op] = []
    if current.chain is not None:
        ops.append(DeleteChain())
    ops += [DeleteFlowtable(ft.name) for ft in fts]
    ops += [CreateFlowtable(ft) for ft in fts]
    if current.chain is not None:
        ops.append(CreateChain(current.chain))
    return Plan(tuple(ops))


def teardown_plan(table_name: str, family: str) -> Plan:
    return Plan((DeleteTable(table_name, family),))


# --- simulator ---------------------------------------------------------------


def _fail(op: Op, why: str) -> NftError:
    return NftError(f"{type(op).__name__}: {why}")


def apply_plan(current: TableState | None, plan: Plan) -> TableState | None:
    """Apply `plan` to `current` in memory, as the kernel would, atomically.

    Raises NftError (and returns nothing) where the kernel would refuse the
    batch: missing or duplicate objects, a device in two flowtables, deleting
    something a rule references, flipping hardware offload in place.
    """
    state = current
    for op in plan.ops:
        state = _apply_one(state, op)
    return state


def _apply_one(state: TableState | None, op: Op) -> TableState | None:
    if isinstance(op, CreateTable):
        if state is not None:
            raise _fail(op, f"table {op.name} exists")
        return TableState(op.name, op.family)
    if state is None:
        raise _fail(op, "no such table")
    if isinstance(op, DeleteTable):
        if (op.name, op.family) != (state.name, state.family):
            raise _fail(op, f"no table {op.family} {op.name}")
        return None
    if isinstance(op, DeleteChain | CreateChain):
        return _apply_chain(state, op)
    if isinstance(op, CreateSet | AddSetElements | RemoveSetElements | DeleteSet):
        return _apply_set(state, op)
    return _apply_flowtable(state, op)


def _apply_chain(state: TableState, op: DeleteChain | CreateChain) -> TableState:
    if isinstance(op, DeleteChain):
        if state.chain is None:
            raise _fail(op, f"no chain {CHAIN_NAME}")
        return replace(state, chain=None)
    if state.chain is not None:
        raise _fail(op, f"chain {CHAIN_NAME} exists")
    fts, sets = chain_references(op.chain)
    missing = sorted(n for n in fts if state.flowtable(n) is None) + sorted(
        n for n in sets if state.set(n) is None
    )
    if missing:
        raise _fail(op, f"rules reference missing objects {missing}")
    return replace(state, chain=op.chain)


def _apply_set(
    state: TableState, op: CreateSet | AddSetElements | RemoveSetElements | DeleteSet
) -> TableState:
    others = tuple(s for s in state.sets if s.name != _set_target(op))
    if isinstance(op, CreateSet):
        if state.set(op.name) is not None:
            raise _fail(op, f"set {op.name} exists")
        return replace(state, sets=(*others, SetState(op.name)))
    old = state.set(_set_target(op))
    if old is None:
        raise _fail(op, f"no set {_set_target(op)}")
    if isinstance(op, DeleteSet):
        if op.name in chain_references(state.chain)[1]:
            raise _fail(op, f"set {op.name} is in use by a rule")
        return replace(state, sets=others)
    if isinstance(op, AddSetElements):
        if old.elements & op.elements:
            raise _fail(op, f"elements {sorted(old.elements & op.elements)} exist")
        return replace(state, sets=(*others, SetState(old.name, old.elements | op.elements)))
    if op.elements - old.elements:
        raise _fail(op, f"no elements {sorted(op.elements - old.elements)}")
    return replace(state, sets=(*others, SetState(old.name, old.elements - op.elements)))


def _set_target(op: CreateSet | AddSetElements | RemoveSetElements | DeleteSet) -> str:
    return op.name if isinstance(op, CreateSet | DeleteSet) else op.set


_FtOp = (
    CreateFlowtable
    | AddFlowtableDevices
    | RemoveFlowtableDevices
    | UpdateFlowtableFlags
    | DeleteFlowtable
)


def _apply_flowtable(state: TableState, op: _FtOp) -> TableState:
    name = op.name if isinstance(op, DeleteFlowtable) else op.ft.name
    others = tuple(f for f in state.flowtables if f.name != name)
    old = state.flowtable(name)

    def check_free(devices: frozenset[str]) -> None:
        taken = sorted(d for f in others for d in f.devices & devices)
        if taken:
            raise _fail(op, f"devices {taken} are in another flowtable")

    if isinstance(op, CreateFlowtable):
        if old is not None:
            raise _fail(op, f"flowtable {name} exists")
        check_free(op.ft.devices)
        return replace(state, flowtables=(*others, op.ft))
    if old is None:
        raise _fail(op, f"no flowtable {name}")
    if isinstance(op, DeleteFlowtable):
        if name in chain_references(state.chain)[0]:
            raise _fail(op, f"flowtable {name} is in use by a rule")
        return replace(state, flowtables=others)
    if op.ft.hardware != old.hardware or op.ft.priority != old.priority:
        raise _fail(op, f"cannot change hardware offload or priority of flowtable {name}")
    if isinstance(op, RemoveFlowtableDevices):
        if op.devices - old.devices:
            raise _fail(op, f"flowtable {name} has no devices {sorted(op.devices - old.devices)}")
        return replace(state, flowtables=(*others, replace(old, devices=old.devices - op.devices)))
    if isinstance(op, UpdateFlowtableFlags):
        return replace(state, flowtables=(*others, replace(old, counter=op.ft.counter)))
    check_free(op.devices)
    new = replace(old, devices=old.devices | op.devices, counter=op.ft.counter)
    return replace(state, flowtables=(*others, new))
