"""An in-memory nf_tables that applies a plan the way the kernel would, atomically.

Why: a plan bug (wrong order, a device in two flowtables, deleting what a
rule references) must fail a unit test, not a gateway. The unit tests' fake
backend applies every plan through this, so it refuses what the kernel refuses.

Device names are names only: like a kernel with name hooks, it takes a name
whether or not a device carries it. Given ``wildcards`` (kernel and
libnftables hook by prefix), "wan*" is the kernel's wildcard and compares as
the kernel compares hooks: on the shorter of the two, so "wan*" and "wan0"
are the same hook.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from offloadd.core.attach import wildcard_prefix
from offloadd.core.errors import NftError
from offloadd.core.model import CHAIN_NAME, SetKind, SetState, TableState
from offloadd.core.plan import (
    AddFlowtableDevices,
    AddSetElements,
    CreateChain,
    CreateFlowtable,
    CreateSet,
    CreateTable,
    DeleteChain,
    DeleteFlowtable,
    DeleteSet,
    DeleteTable,
    Op,
    Plan,
    RemoveFlowtableDevices,
    RemoveSetElements,
    UpdateFlowtableFlags,
    chain_references,
)


def _fail(op: Op, why: str) -> NftError:
    return NftError(f"{type(op).__name__}: {why}")


def apply_plan(current: TableState | None, plan: Plan, *,
               wildcards: bool = False) -> TableState | None:
    """Apply `plan` to `current` in memory, as the kernel would, atomically.

    Raises NftError (and returns nothing) where the kernel would refuse the
    batch: missing or duplicate objects, a device in two flowtables, deleting
    something a rule references, flipping hardware offload in place.
    """
    state = current
    for op in plan.ops:
        state = _apply_one(state, op, wildcards)
    return state


def _hook_key(spec: str, wildcards: bool) -> str:
    """What the kernel compares: a name with its NUL, a wildcard's prefix without."""
    prefix = wildcard_prefix(spec) if wildcards else None
    return prefix if prefix is not None else spec + "\0"


def _same_hook(a: str, b: str, wildcards: bool) -> bool:
    ka, kb = _hook_key(a, wildcards), _hook_key(b, wildcards)
    n = min(len(ka), len(kb))
    return ka[:n] == kb[:n]


def _clashes(new: Iterable[str], have: Iterable[str], wildcards: bool) -> list[str]:
    have = tuple(have)
    return sorted({d for d in new if any(_same_hook(d, h, wildcards) for h in have)})


def _inner_clashes(devices: Iterable[str], wildcards: bool) -> list[str]:
    ordered = sorted(devices)
    return sorted({a for i, a in enumerate(ordered) for b in ordered[i + 1:]
                   if _same_hook(a, b, wildcards)})


def _apply_one(state: TableState | None, op: Op, wildcards: bool) -> TableState | None:
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
    return _apply_flowtable(state, op, wildcards)


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


_SetOp = CreateSet | AddSetElements | RemoveSetElements | DeleteSet


def _apply_set(state: TableState, op: _SetOp) -> TableState:
    others = tuple(s for s in state.sets if s.name != _set_target(op))
    if isinstance(op, CreateSet):
        if state.set(op.name) is not None:
            raise _fail(op, f"set {op.name} exists")
        return replace(state, sets=(*others, SetState(op.name, kind=op.kind, size=op.size)))
    old = state.set(_set_target(op))
    if old is None:
        raise _fail(op, f"no set {_set_target(op)}")
    if isinstance(op, DeleteSet):
        if op.name in chain_references(state.chain)[1]:
            raise _fail(op, f"set {op.name} is in use by a rule")
        return replace(state, sets=others)
    if not old.kind.holds_names:
        raise _fail(op, f"set {old.name} holds no interface names")
    if isinstance(op, AddSetElements):
        if old.elements & op.elements:
            raise _fail(op, f"elements {sorted(old.elements & op.elements)} exist")
        # libnftables reads "wan*" as a wildcard in any set, whatever the kernel.
        wild = [e for e in op.elements if wildcard_prefix(e) is not None]
        if old.kind is SetKind.IFNAMES and wild:
            raise _fail(op, f"set {old.name}: wildcards {sorted(wild)} need flags interval")
        overlap = (_clashes(op.elements, old.elements, True)
                   + _inner_clashes(op.elements, True))
        if old.kind is SetKind.IFNAMES_WILD and overlap:
            raise _fail(op, f"set {old.name}: elements {sorted(set(overlap))} overlap")
        return replace(state, sets=(*others, replace(old, elements=old.elements | op.elements)))
    if op.elements - old.elements:
        raise _fail(op, f"no elements {sorted(op.elements - old.elements)}")
    return replace(state, sets=(*others, replace(old, elements=old.elements - op.elements)))


def _set_target(op: _SetOp) -> str:
    return op.name if isinstance(op, CreateSet | DeleteSet) else op.set


_FtOp = (
    CreateFlowtable
    | AddFlowtableDevices
    | RemoveFlowtableDevices
    | UpdateFlowtableFlags
    | DeleteFlowtable
)


def _apply_flowtable(state: TableState, op: _FtOp, wildcards: bool) -> TableState:
    name = op.name if isinstance(op, DeleteFlowtable) else op.ft.name
    others = tuple(f for f in state.flowtables if f.name != name)
    old = state.flowtable(name)

    def check_free(devices: frozenset[str]) -> None:
        # EEXIST: one hook in two flowtables of a table (a wildcard takes
        # every name it covers), or twice in one list.
        taken = _clashes(devices, (d for f in others for d in f.devices), wildcards)
        if taken:
            raise _fail(op, f"devices {taken} are in another flowtable")
        twice = _inner_clashes(devices, wildcards)
        if twice:
            raise _fail(op, f"devices {twice} are the same hook twice")

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
    # A hook the flowtable has already is dropped without a word (measured:
    # "wan0" added beside "wan*" is accepted and never listed).
    fresh = frozenset(d for d in op.devices
                      if not any(_same_hook(d, h, wildcards) for h in old.devices))
    new = replace(old, devices=old.devices | fresh, counter=op.ft.counter)
    return replace(state, flowtables=(*others, new))
