"""Desired and current kernel state as plain values, and the pure function
that turns configuration plus the current links into the desired state.

Why: keeping "what should the kernel hold" free of any kernel access makes it
testable without root and lets the planner diff two values instead of poking
at live objects.
"""

from __future__ import annotations

import enum
import fnmatch
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from offloadd.core.attach import FlowtableAttach, wildcard_covering
from offloadd.core.config import (
    INT32_MAX,
    INT32_MIN,
    Config,
    FlowtableConfig,
    Hardware,
    Stack,
    device_name_problem,
)
from offloadd.core.errors import ConfigError
from offloadd.core.gate import PASSED_SETS, PASSED_SIZE, gate_step, l4_prefix
from offloadd.core.stack import Path, PppoeSessions, Resolved, resolve

CHAIN_NAME = "forward"
SET_SUFFIX = "_ifs"


# One enum for config and model; config owns it because model imports config.
HardwareMode = Hardware


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str | None  # IFLA_INFO_KIND; None = plain device ("ether" in config)
    up: bool = True
    # IFLA_MASTER: the bridge (or bond) this device is a port of.
    master: int | None = None
    # IFLA_LINK in this namespace: the device beneath a VLAN (or macvlan).
    lower: int | None = None


@dataclass(frozen=True)
class FlowtableState:
    name: str
    devices: frozenset[str]
    hardware: bool
    counter: bool
    priority: int = 0


class SetKind(enum.Enum):
    IFNAMES = "ifnames"  # `type ifname`: a flowtable's devices, for its rule's guard
    # `type ifname; flags interval`: the same for a flowtable with kernel
    # wildcards, whose "wan*" is a range of names; only there, so every other
    # set stays declared as before.
    IFNAMES_WILD = "ifnames_wild"
    PASSED = "passed"  # the gate's ct ids (offloadd.core.gate), filled by the packet path
    OTHER = "other"  # read from the kernel, declared as offloadd never declares it

    @property
    def holds_names(self) -> bool:
        """Its elements are interface names (or wildcards): offloadd's state."""
        return self in (SetKind.IFNAMES, SetKind.IFNAMES_WILD)


@dataclass(frozen=True)
class SetState:
    """A set of offloadd's table. Only an ifname set's elements are state:
    the gate's are the packet path's, never read or planned.

    ``size``: a gate set's cap on its elements (0 for the others). Left out of
    equality: a set larger than desired is kept (the planner re-creates only a
    smaller one), and must not read back as a mismatch."""

    name: str
    elements: frozenset[str] = frozenset()
    kind: SetKind = SetKind.IFNAMES
    size: int = field(default=0, compare=False)


@dataclass(frozen=True)
class ChainState:
    """offloadd's forward base chain; rules are nft rule text, in order."""

    priority: int
    rules: tuple[str, ...] = ()


@dataclass(frozen=True)
class TableState:
    name: str
    family: str
    flowtables: tuple[FlowtableState, ...] = ()
    sets: tuple[SetState, ...] = ()
    chain: ChainState | None = None

    def __post_init__(self) -> None:
        # Canonical order makes equal states compare equal however built.
        fts = tuple(sorted(self.flowtables, key=lambda f: f.name))
        sets = tuple(sorted(self.sets, key=lambda s: s.name))
        for kind, names in (("flowtable", [f.name for f in fts]), ("set", [s.name for s in sets])):
            dups = sorted({n for n in names if names.count(n) > 1})
            if dups:
                raise ValueError(f"table {self.name}: duplicate {kind} names {dups}")
        object.__setattr__(self, "flowtables", fts)
        object.__setattr__(self, "sets", sets)

    def flowtable(self, name: str) -> FlowtableState | None:
        return next((f for f in self.flowtables if f.name == name), None)

    def set(self, name: str) -> SetState | None:
        return next((s for s in self.sets if s.name == name), None)

    @property
    def passed_size(self) -> int:
        """Flows the gate holds at most: the smaller of its sets' sizes (a flow
        needs its key in both); 0 without a gate."""
        return min((s.size for s in self.sets if s.kind is SetKind.PASSED), default=0)


class NoteKind(enum.Enum):
    ALSO_MATCHES = "also_matches"  # informational: first flowtable wins
    NOT_HW_CAPABLE = "not_hw_capable"  # hardware = required, device left out
    UNSAFE_NAME = "unsafe_name"  # name cannot be written safely in an nft script (as itself)
    KERNEL_REFUSED = "kernel_refused"  # the kernel refused to attach it; left out for now
    STACK = "stack"  # the devices beneath it are not known (offloadd.core.stack)


@dataclass(frozen=True)
class DeviceDecision:
    """Why a device is (or is not) in a kernel flowtable, for status/metrics."""

    device: str
    flowtable: str | None  # kernel flowtable name; None = left out
    hardware: bool
    reason: str
    selector: str  # the configured [[flowtable]] name that matched
    # False: a name declared to the kernel ahead of its device (offloadd.core.attach);
    # in the flowtable's list, but nothing is attached until the device appears.
    present: bool = True


@dataclass(frozen=True)
class DeviceNote:
    device: str
    selector: str
    kind: NoteKind
    message: str

    @property
    def is_problem(self) -> bool:
        return self.kind is not NoteKind.ALSO_MATCHES


@dataclass(frozen=True)
class DesiredResult:
    table: TableState
    decisions: tuple[DeviceDecision, ...] = ()
    notes: tuple[DeviceNote, ...] = ()
    attach: tuple[FlowtableAttach, ...] = ()
    # (configured flowtable, what a selected device stands for), for each
    # device of a flowtable with stack = "lower"/"both".
    stacks: tuple[tuple[str, Resolved], ...] = ()

    def declared_only(self) -> frozenset[str]:
        """Names in a flowtable's list that no present device carries."""
        return frozenset(d.device for d in self.decisions if not d.present)

    def wildcards(self) -> frozenset[str]:
        """The kernel wildcards ("wan*") in the flowtables' lists."""
        listed = {d for ft in self.table.flowtables for d in ft.devices}
        return frozenset(w for fa in self.attach for w in fa.wildcards if w in listed)

    def flowtable_of(self) -> dict[str, str]:
        """Device -> kernel flowtable, for every device offloadd has in one:
        listed, declared ahead of the device, or hooked by a wildcard; and
        a device whose flows a flowtable takes through the devices beneath
        it (stack = "lower": in the rule's guard set, not in the list)."""
        out = {d.device: d.flowtable for d in self.decisions if d.flowtable is not None}
        for ft in self.table.flowtables:
            guard = self.table.set(set_name(ft.name))
            for dev in (guard.elements - ft.devices) if guard is not None else ():
                out.setdefault(dev, ft.name)
        return out

    @property
    def problems(self) -> tuple[DeviceNote, ...]:
        return tuple(n for n in self.notes if n.is_problem)


def hooked_devices(listed: Iterable[str], present: Iterable[str],
                   wildcards: frozenset[str]) -> frozenset[str]:
    """The ``present`` devices a flowtable listing ``listed`` hooks: those it
    names, and those a wildcard of it covers. A "wan*" that is not one of
    ``wildcards`` is a literal name (libnftables < 1.1.6 sends it as such)."""
    names = frozenset(listed)
    specs = names & wildcards
    return frozenset(d for d in present
                     if d in names or wildcard_covering(specs, d) is not None)


def _shown(name: str) -> str:
    """A device name quoted for a message: as it is where that is unambiguous
    (a name not UTF-8 already reads "lan\\xff"), else as a Python literal."""
    return f'"{name}"' if name.isprintable() and '"' not in name else repr(name)


def set_name(flowtable: str) -> str:
    return f"{flowtable}{SET_SUFFIX}"


def _kind_label(link: Link) -> str:
    return link.kind if link.kind is not None else "ether"


def selector_matches(ft: FlowtableConfig, link: Link) -> bool:
    """The selector's matching semantics, exclude included."""
    return _included(ft, link) is not None and _excluded_by(ft, link) is None


def _included(ft: FlowtableConfig, link: Link) -> str | None:
    """Why the devices/kinds part matches, or None."""
    pattern = next((p for p in ft.devices if fnmatch.fnmatchcase(link.name, p)), None)
    if ft.devices and pattern is None:
        return None
    if ft.kinds and _kind_label(link) not in ft.kinds:
        return None
    parts = []
    if pattern is not None:
        parts.append(f"name matches {pattern!r}")
    if ft.kinds:
        parts.append(f"kind {_kind_label(link)!r}")
    return " and ".join(parts)


def _excluded_by(ft: FlowtableConfig, link: Link) -> str | None:
    return next((p for p in ft.exclude if fnmatch.fnmatchcase(link.name, p)), None)


def offload_rules(flowtable: str, protocols: Iterable[str],
                  elephant_packets: int) -> tuple[str, str]:
    """The forward-chain rules that add matching flows to `flowtable`: one
    for packets of each direction (the gate's key is read from the packet's
    ports, whose order depends on the direction).

    The iifname/oifname guard keeps flows whose devices are not both in the
    flowtable from being marked offloaded (nothing would forward them).
    ``ct state established``: only flows that saw a reply. The kernel itself
    offloads a UDP flow at its second packet, reply or not (seen on 6.12:
    [UNREPLIED] [OFFLOAD] entries, from flows whose first answer came late);
    after a device removal those were not offloaded again under their entry
    within 8 s, and a flow nobody answers has nothing to gain from the fast path.
    The gate (offloadd.core.gate): a packet of each direction has passed.
    """
    protos = tuple(protocols)
    head, _ = l4_prefix(protos)
    ifs = "@" + set_name(flowtable)
    tail = f" ct packets > {elephant_packets}" if elephant_packets > 0 else ""
    # The cheap conntrack matches first: a packet of the other direction, or
    # of a new flow, stops there, before the ifname set lookups.
    rules = tuple(
        f"ct state established ct direction {direction} {head}iifname {ifs} oifname {ifs} "
        f"{gate_step(protos, direction)}{tail} flow add @{flowtable}"
        for direction in ("original", "reply"))
    return rules[0], rules[1]


def auto_forward_priority(other_forward_chain_priorities: Iterable[int]) -> int:
    """A forward priority after every other forward base chain (and >= 0).

    Running last means every other chain's verdict (drop, reject) has already
    been applied to a packet before its flow can be offloaded.
    """
    highest = max(other_forward_chain_priorities, default=-1)
    if highest >= INT32_MAX:
        raise ConfigError(
            f'daemon.priority: "auto" needs a priority above {highest}, which exceeds '
            f"{INT32_MAX}; set daemon.priority to an integer in {INT32_MIN}..{INT32_MAX}"
        )
    return max(0, highest + 1)


def _capable(hw_capable: Callable[[str], bool] | Mapping[str, bool], device: str) -> bool:
    if isinstance(hw_capable, Mapping):
        return bool(hw_capable.get(device, False))
    return hw_capable(device)


@dataclass(frozen=True)
class _KernelFlowtable:
    name: str
    hardware: bool
    selector: FlowtableConfig


_NO_SESSIONS = PppoeSessions()


def desired_state(
    config: Config,
    links: Iterable[Link],
    hw_capable: Callable[[str], bool] | Mapping[str, bool],
    forward_priority: int,
    *,
    refused: Mapping[str, str] | None = None,
    attach: Sequence[FlowtableAttach] = (),
    pppoe: PppoeSessions = _NO_SESSIONS,
    shallow: Mapping[str, str] | None = None,
    gate_size: int = PASSED_SIZE,
) -> DesiredResult:
    """What offloadd's table should hold for these links.

    ``refused`` maps devices the kernel would not attach to its message: they
    are left out and reported, so one such device does not hold back the rest.
    ``attach`` (offloadd.core.attach.attach_plan): names to declare to the
    kernel ahead of their device; each stays in its flowtable whether or not
    the device exists, so the kernel hooks it the moment it appears. Its
    wildcards ("wan*") go into the flowtable and its (interval) set in place
    of the devices they cover, which are decided but not listed.

    Every configured flowtable yields its kernel flowtables (and sets) even
    when no device matches yet, so a device appearing later changes only
    device lists and set elements, never the chain: flows already offloaded
    survive.

    A flowtable with ``stack`` "lower" or "both" also takes the devices
    beneath each selected one (offloadd.core.stack; ``pppoe``: the sessions
    of the namespace); the selected device stays in the rule's guard set
    either way, since the forward hook sees the flow on it. ``shallow`` maps
    selected devices whose fast path beneath was refused (the stack guard,
    offloadd.core.guard) to why: they are used as they are. ``gate_size``:
    the size of the gate's sets (offloadd.core.gate.gate_size).
    """
    links_sorted = sorted(links, key=lambda link: link.name)
    kernel_fts = [_KernelFlowtable(kname, kname == sel.hw_name, sel)
                  for sel in config.flowtables for kname in sel.kernel_names()]
    b = _Builder({k.name: set() for k in kernel_fts}, hw_capable, refused or {}, shallow or {})
    wild = _wildcards(attach, b.members, b.refused, b.notes)
    for sel in config.flowtables:
        specs = wild.get(sel.name, ()) if sel.hardware is HardwareMode.OFF else ()
        for link in links_sorted:
            b.select(sel, link, links_sorted, specs, pppoe)
    b.decisions.extend(_declare(attach, b.owner, b.members, b.refused))
    for kname, specs in wild.items():
        b.members[kname].update(specs)
    guard = {k: devs | b.guard.get(k, set()) for k, devs in b.members.items()}
    table = _table(config, kernel_fts, b.members, guard, wild=frozenset(wild),
                   forward_priority=forward_priority, gate_size=gate_size)
    return DesiredResult(table=table, decisions=tuple(b.decisions), notes=tuple(b.notes),
                         attach=tuple(attach), stacks=tuple(b.stacks))


class _Builder:
    """The decisions of one desired_state() call as they are made."""

    def __init__(self, members: dict[str, set[str]],
                 hw_capable: Callable[[str], bool] | Mapping[str, bool],
                 refused: Mapping[str, str], shallow: Mapping[str, str]) -> None:
        self.members = members
        self.shallow = shallow
        # Kernel flowtable -> devices above those it took beneath them.
        self.guard: dict[str, set[str]] = {}
        self.hw_capable = hw_capable
        self.refused = refused
        self.decisions: list[DeviceDecision] = []
        self.notes: list[DeviceNote] = []
        self.owner: dict[str, str] = {}  # device -> selector name that claimed it
        self.beneath: set[tuple[str, str]] = set()  # (selector, device) taken beneath another
        self.stacks: list[tuple[str, Resolved]] = []

    def select(self, sel: FlowtableConfig, link: Link, links: Sequence[Link],
               specs: Sequence[str], pppoe: PppoeSessions) -> None:
        why = _included(sel, link)
        if why is None:
            return
        pattern = _excluded_by(sel, link)
        if pattern is not None:
            self.decisions.append(DeviceDecision(
                link.name, None, False, f"{why}, but excluded by {pattern!r}", sel.name))
            return
        if (sel.name, link.name) in self.beneath:
            return  # already taken as a device beneath a selected one
        if link.name in self.owner:
            self.notes.append(DeviceNote(
                link.name, sel.name, NoteKind.ALSO_MATCHES,
                f"{link.name} also matches flowtable {sel.name!r}; "
                f"kept in {self.owner[link.name]!r}"))
            return
        # The kernel refuses one device in two flowtables of a table
        # (EEXIST), so the first configured flowtable keeps it.
        self.owner[link.name] = sel.name
        if sel.stack is not Stack.AS_LISTED:
            if link.name in self.shallow:
                resolved = Resolved(link.name, (Path((link.name,)),),
                                    f"the fast path beneath {link.name} is refused: "
                                    f"{self.shallow[link.name]}")
            else:
                resolved = resolve(link, links, pppoe)
            self.stacks.append((sel.name, resolved))
            if resolved.note:
                self.notes.append(DeviceNote(link.name, sel.name, NoteKind.STACK, resolved.note))
            if resolved.stacked:
                for kname in self._beneath(sel, why, resolved):
                    self.guard.setdefault(kname, set()).add(link.name)
                if sel.stack is Stack.LOWER:
                    self.decisions.append(DeviceDecision(
                        link.name, None, False,
                        f"{why}; stack = lower: the devices beneath it are used instead "
                        f"({'; '.join(str(p) for p in resolved.paths) or 'none'})", sel.name))
                    return
        spec = wildcard_covering(specs, link.name)
        if spec is not None:
            # Hooked by the kernel: listed beside its wildcard, the name
            # would be the same hook twice (the kernel drops it or, in one
            # list, refuses it), so the read-back would never match.
            self.decisions.append(DeviceDecision(
                link.name, sel.name, False, f"{why}; hooked by the kernel's wildcard {spec}",
                sel.name))
            return
        self._place(sel, link.name, why)

    def _place(self, sel: FlowtableConfig, dev: str, why: str) -> str | None:
        """Puts ``dev`` into its kernel flowtable unless its name or the
        kernel rules it out; returns that flowtable."""
        problem = device_name_problem(dev)
        if problem is not None:
            # Left out for good (a problem note is logged once, when it
            # first appears): no transaction ever names it, so the kernel
            # cannot refuse it again and again, holding back the rest.
            msg = f"{_shown(dev)} cannot be written safely in an nft script: it {problem}; left out"
            self.notes.append(DeviceNote(dev, sel.name, NoteKind.UNSAFE_NAME, msg))
            self.decisions.append(DeviceDecision(dev, None, False, msg, sel.name))
            return None
        if dev in self.refused:
            msg = f"{why}; the kernel refused to attach {dev}: {self.refused[dev]}"
            self.notes.append(DeviceNote(dev, sel.name, NoteKind.KERNEL_REFUSED, msg))
            self.decisions.append(DeviceDecision(dev, None, False, msg, sel.name))
            return None
        decision = _place(sel, sel.hardware, dev, why, self.hw_capable)
        self.decisions.append(decision)
        if decision.flowtable is None:
            self.notes.append(
                DeviceNote(dev, sel.name, NoteKind.NOT_HW_CAPABLE, decision.reason))
        else:
            self.members[decision.flowtable].add(dev)
        return decision.flowtable

    def _beneath(self, sel: FlowtableConfig, why: str, resolved: Resolved) -> set[str]:
        """Places the devices beneath a selected one (stack = lower/both) like
        selected devices; returns the kernel flowtables they went into."""
        placed: set[str] = set()
        for path in resolved.paths:
            dev = path.bottom
            if (sel.name, dev) in self.beneath or self.owner.get(dev) == sel.name:
                # Beneath two selected devices (two VLANs on one NIC), or
                # selected itself: one entry.
                placed |= {d.flowtable for d in self.decisions
                           if d.device == dev and d.flowtable is not None}
                continue
            what = f"{why}; beneath {resolved.device} ({path}), stack = {sel.stack.value}"
            pattern = next((p for p in sel.exclude if fnmatch.fnmatchcase(dev, p)), None)
            if pattern is not None:
                self.decisions.append(DeviceDecision(
                    dev, None, False, f"{what}, but excluded by {pattern!r}", sel.name))
                continue
            if dev in self.owner:
                other = self.owner[dev]
                self.notes.append(DeviceNote(
                    dev, sel.name, NoteKind.ALSO_MATCHES,
                    f"{dev} is beneath {resolved.device} ({path}) but already in flowtable "
                    f"{other!r}; kept there, so flows of {resolved.device} through it are "
                    f"offloaded only by {other!r}, when both their devices are in it"))
                continue
            self.beneath.add((sel.name, dev))
            self.owner[dev] = sel.name
            kname = self._place(sel, dev, what)
            if kname is not None:
                placed.add(kname)
        return placed


def _table(config: Config, kernel_fts: Sequence[_KernelFlowtable],
           members: Mapping[str, set[str]], guard: Mapping[str, set[str]], *,
           wild: frozenset[str], forward_priority: int, gate_size: int) -> TableState:
    """The table for these members; ``guard``: each rule's devices (the
    members and the devices above those taken as beneath them); ``wild``:
    kernel flowtables with wildcards."""
    # Hardware rules first: a flow is offloaded by the first rule that adds it.
    ordered = [k for k in kernel_fts if k.hardware] + [k for k in kernel_fts if not k.hardware]
    flowtables = tuple(
        FlowtableState(
            k.name, frozenset(members[k.name]), k.hardware, k.selector.counter, k.selector.priority
        )
        for k in kernel_fts
    )
    # A wildcard in the set too: the rule's guard then matches the devices
    # the kernel hooks while offloadd is not there to list them.
    sets = tuple(SetState(set_name(k.name), frozenset(guard[k.name]),
                          SetKind.IFNAMES_WILD if k.name in wild else SetKind.IFNAMES)
                 for k in kernel_fts)
    # Per flowtable: its offload rule for each direction, the gate in it.
    rules = tuple(
        rule for k in ordered
        for rule in offload_rules(k.name, k.selector.protocols, k.selector.elephant_packets)
    )
    if rules:
        sets += tuple(SetState(name, kind=SetKind.PASSED, size=gate_size)
                      for name in PASSED_SETS)
    return TableState(
        name=config.daemon.table,
        family=config.daemon.family.value,
        flowtables=flowtables,
        sets=sets,
        chain=ChainState(priority=forward_priority, rules=rules),
    )


def _wildcards(attach: Sequence[FlowtableAttach], members: Mapping[str, set[str]],
               refused: Mapping[str, str], notes: list[DeviceNote]
               ) -> dict[str, tuple[str, ...]]:
    """Kernel flowtable -> the wildcards it gets; one the kernel refused is
    left out (reported), and offloadd attaches what it covers."""
    out: dict[str, tuple[str, ...]] = {}
    for fa in attach:
        if fa.flowtable not in members:
            continue
        specs = []
        for spec in fa.wildcards:
            if spec in refused:
                notes.append(DeviceNote(
                    spec, fa.flowtable, NoteKind.KERNEL_REFUSED,
                    f"the kernel refused the wildcard {spec}: {refused[spec]}; offloadd "
                    "attaches the devices it covers"))
                continue
            specs.append(spec)
        if specs:
            out[fa.flowtable] = tuple(specs)
    return out


def _declare(attach: Sequence[FlowtableAttach], owner: dict[str, str],
             members: dict[str, set[str]], refused: Mapping[str, str]
             ) -> list[DeviceDecision]:
    """Adds the names to declare ahead of their device to ``members``.

    A name a present device carries was placed like any device; a refused or
    unsafe name is never declared.
    """
    out = []
    for fa in attach:
        if fa.flowtable not in members:
            continue
        for name in fa.declared:
            if name in owner or name in refused or device_name_problem(name) is not None:
                continue
            owner[name] = fa.flowtable
            members[fa.flowtable].add(name)
            out.append(DeviceDecision(
                name, fa.flowtable, False,
                f"declared to the kernel ahead of the device (name hooks); no device {name} "
                "yet: the kernel hooks it when it appears", fa.flowtable, present=False))
    return out


def _place(
    sel: FlowtableConfig,
    mode: HardwareMode,
    device: str,
    why: str,
    hw_capable: Callable[[str], bool] | Mapping[str, bool],
) -> DeviceDecision:
    if mode is HardwareMode.OFF:
        return DeviceDecision(device, sel.name, False, f"{why}; hardware = off", sel.name)
    capable = _capable(hw_capable, device)
    if capable:
        return DeviceDecision(
            device, sel.hw_name, True, f"{why}; can offload in hardware", sel.name
        )
    if mode is HardwareMode.AUTO:
        return DeviceDecision(
            device, sel.name, False, f"{why}; cannot offload in hardware, software", sel.name
        )
    # A non-capable device in a hardware flowtable makes the kernel refuse the
    # whole transaction, so it is left out and reported instead.
    return DeviceDecision(
        device,
        None,
        False,
        f"{why}; hardware = required but {device} cannot offload in hardware; left out",
        sel.name,
    )

