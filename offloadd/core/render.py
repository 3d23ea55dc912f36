"""Render a Plan as a native nft script that libnftables runs as one batch.

Why native syntax and not JSON: libnftables' JSON input ignores flowtable
flags and counter, and a JSON "delete flowtable" that lists devices deletes
the whole flowtable. The script is one command per line; libnftables turns
the whole text into a single atomic transaction.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import assert_never

from offloadd.core.attach import wildcard_prefix
from offloadd.core.config import is_safe_ifname
from offloadd.core.errors import OffloaddError
from offloadd.core.gate import passed_declaration
from offloadd.core.model import CHAIN_NAME, FlowtableState, SetKind
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
)

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# nf_tables refuses a flowtable message naming 256 or more devices (EFBIG,
# NFT_NETDEVICE_MAX); a flowtable itself may hold more (501 measured on 6.1
# and 6.12), so longer lists go out as several statements of one batch.
DEVICES_PER_STATEMENT = 128
_FAMILIES = frozenset({"inet", "ip", "ip6", "netdev", "bridge", "arp"})
_SET_DECLARATIONS = {
    SetKind.IFNAMES: "{ type ifname; }",
    # Wildcards ("wan*") are ranges of names: only an interval set holds them.
    SetKind.IFNAMES_WILD: "{ type ifname; flags interval; }",
}


class RenderError(OffloaddError, ValueError):
    """A name cannot be written safely into an nft script (e.g. has a quote)."""


def _ident(kind: str, name: str) -> str:
    # Table/flowtable/set names are validated by config, but current state
    # comes from the kernel and may hold anything someone else put there.
    if not _IDENT.match(name):
        raise RenderError(f"{kind} name {name!r} cannot be written in an nft script")
    return name


def _devices(devices: Iterable[str]) -> str:
    quoted = []
    for dev in sorted(devices):
        # nft quoted strings have no escapes; refuse what would break out.
        if not is_safe_ifname(dev):
            raise RenderError(f"interface name {dev!r} cannot be written in an nft script")
        # nft reads a trailing "*" as a wildcard. The model lists no device
        # whose name has one (device_name_problem), so a "*" here is a kernel
        # wildcard the config asked for, and must look like one.
        if "*" in dev and wildcard_prefix(dev) is None:
            raise RenderError(f"interface name {dev!r} has a '*' nft would not read as "
                              "one prefix wildcard")
        quoted.append(f'"{dev}"')
    return "{ " + ", ".join(quoted) + " }"


def _chunks(devices: Iterable[str]) -> list[tuple[str, ...]]:
    ordered = sorted(devices)
    return [tuple(ordered[i:i + DEVICES_PER_STATEMENT])
            for i in range(0, len(ordered), DEVICES_PER_STATEMENT)]


def _flowtable_adds(where: str, ft: FlowtableState, devices: Iterable[str]) -> list[str]:
    """`add flowtable` statements for ``ft`` with ``devices``, at most
    DEVICES_PER_STATEMENT per statement; the first also creates it."""
    head = f"add flowtable {where} {_ident('flowtable', ft.name)}"
    return [f"{head} {_flowtable_block(ft, chunk)}" for chunk in _chunks(devices) or [()]]


def _flowtable_block(ft: FlowtableState, devices: Iterable[str] | None) -> str:
    parts = [f"hook ingress priority {ft.priority};"]
    devs = tuple(devices) if devices is not None else ()
    if devs:
        parts.append(f"devices = {_devices(devs)};")
    # Always re-sent in full: nft replaces a flowtable's flags on every add.
    if ft.hardware:
        parts.append("flags offload;")
    if ft.counter:
        parts.append("counter;")
    return "{ " + " ".join(parts) + " }"


def render(plan: Plan, family: str, table: str) -> str:
    if family not in _FAMILIES:
        raise RenderError(f"family {family!r} is not an nft family")
    where = f"{family} {_ident('table', table)}"
    lines: list[str] = []
    for op in plan.ops:
        lines.extend(_render_op(op, family, table, where))
    return "".join(line + "\n" for line in lines)


def _render_op(op: Op, family: str, table: str, where: str) -> list[str]:
    if isinstance(op, CreateTable | DeleteTable):
        if (op.family, op.name) != (family, table):
            raise RenderError(f"plan is for table {op.family} {op.name}, not {where}")
        verb = "add" if isinstance(op, CreateTable) else "delete"
        return [f"{verb} table {where}"]
    if isinstance(op, CreateFlowtable):
        return _flowtable_adds(where, op.ft, op.ft.devices)
    if isinstance(op, AddFlowtableDevices):
        return _flowtable_adds(where, op.ft, op.devices)
    if isinstance(op, UpdateFlowtableFlags):
        block = _flowtable_block(op.ft, None)
        return [f"add flowtable {where} {_ident('flowtable', op.ft.name)} {block}"]
    if isinstance(op, RemoveFlowtableDevices):
        # The kernel identifies the hooks to drop by hook and priority too.
        head = f"delete flowtable {where} {_ident('flowtable', op.ft.name)}"
        return [f"{head} {{ hook ingress priority {op.ft.priority}; devices = {_devices(chunk)}; }}"
                for chunk in _chunks(op.devices)]
    if isinstance(op, DeleteFlowtable):
        return [f"delete flowtable {where} {_ident('flowtable', op.name)}"]
    if isinstance(op, CreateSet):
        if op.kind is SetKind.OTHER:
            raise RenderError(f"set {op.name}: offloadd only creates sets it declares")
        if op.kind is SetKind.PASSED:
            # Declared with no size, the cap would be the kernel's default,
            # not the one offloadd planned (gate_size).
            if op.size < 1:
                raise RenderError(f"set {op.name}: a gate set needs a size, not {op.size}")
            decl = passed_declaration(op.size)
        else:
            decl = _SET_DECLARATIONS[op.kind]
        return [f"add set {where} {_ident('set', op.name)} {decl}"]
    if isinstance(op, AddSetElements | RemoveSetElements):
        verb = "add" if isinstance(op, AddSetElements) else "delete"
        return [f"{verb} element {where} {_ident('set', op.set)} {_devices(op.elements)}"]
    if isinstance(op, DeleteSet):
        return [f"delete set {where} {_ident('set', op.name)}"]
    if isinstance(op, DeleteChain):
        # Flushing first keeps this valid on kernels that refuse to delete a
        # chain that still has rules (EBUSY).
        return [f"flush chain {where} {CHAIN_NAME}", f"delete chain {where} {CHAIN_NAME}"]
    if not isinstance(op, CreateChain):
        assert_never(op)
    chain = op.chain
    for rule in chain.rules:
        if "\n" in rule or ";" in rule:
            raise RenderError(f"rule {rule!r} would split into several commands")
    return [
        f"add chain {where} {CHAIN_NAME} "
        f"{{ type filter hook forward priority {chain.priority}; policy accept; }}",
        *(f"add rule {where} {CHAIN_NAME} {rule}" for rule in chain.rules),
    ]
