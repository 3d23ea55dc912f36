"""Which device names offloadd declares to the kernel ahead of the device (pure).

Why: a device that appears (a PPPoE session, a VPN, a VLAN) is slow-pathed
until offloadd has seen it and added it to its flowtable. A kernel with name
hooks (6.16+, found by a probe, see offloadd.kernel.capability) takes a
flowtable device by name before the device exists and hooks it the moment it
registers: the attach then happens in the kernel, with no daemon round trip,
even while offloadd is restarting.

Only where the kernel's choice is exactly offloadd's: an exact name (no glob)
of a flowtable with ``hardware = "off"`` (otherwise the placement depends on
the device, known only when it appears), no ``kinds`` (the kernel hooks a
name whatever its kind), not excluded, and not possibly claimed by an earlier
flowtable. Everything else is attached by the daemon, per flowtable, with the
reason shown in ``offloadctl status`` and ``--check``.

Where kernel and libnftables hook by prefix (the wildcard probe), a prefix
pattern ("wan*") is handed to the kernel as it is, on the same conditions and
two more: no exclude of its flowtable may match a name with that prefix, and
no other flowtable of the table may take one. The kernel refuses a whole
batch (EEXIST) when a name its wildcard covers sits in another flowtable of
the table, and it would hook an excluded device all the same.
"""

from __future__ import annotations

import enum
import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from offloadd.core.config import (
    IFNAME_MAX,
    Config,
    FlowtableConfig,
    Hardware,
    Stack,
    is_safe_ifname,
)

GLOB_CHARS = frozenset("*?[")
# A literal prefix and one trailing "*": the only glob the kernel can match.
_PREFIX_GLOB = re.compile(r"^[^*?\[\]]+\*$")


class AttachMode(enum.Enum):
    KERNEL = "kernel"  # every configured name or pattern declared; the kernel hooks each device
    MIXED = "mixed"  # some declared (names, wildcards), the rest attached by offloadd
    DAEMON = "daemon"  # offloadd attaches each device when it sees it


@dataclass(frozen=True)
class FlowtableAttach:
    """How one configured flowtable's devices get attached, and why."""

    flowtable: str
    mode: AttachMode
    reason: str
    declared: tuple[str, ...] = ()  # names given to the kernel ahead of their device
    # Prefix patterns ("wan*") given to the kernel as wildcards: it hooks every
    # device whose name starts with the prefix, present or to come.
    wildcards: tuple[str, ...] = ()


def is_glob(pattern: str) -> bool:
    return any(c in GLOB_CHARS for c in pattern)


def wildcard_prefix(pattern: str) -> str | None:
    """The prefix of a pattern the kernel can take as a wildcard ("wan" for
    "wan*"); None for any other pattern or name."""
    if not _PREFIX_GLOB.match(pattern):
        return None
    prefix = pattern[:-1]
    # The kernel keeps the spec in an IFNAMSIZ buffer, "*" included.
    if not is_safe_ifname(prefix) or len(prefix.encode()) + 1 > IFNAME_MAX:
        return None
    return prefix


def wildcard_covering(specs: Iterable[str], name: str) -> str | None:
    """The wildcard among ``specs`` that covers device ``name``, if any."""
    for spec in specs:
        prefix = wildcard_prefix(spec)
        if prefix is not None and name.startswith(prefix):
            return spec
    return None


def _literal_part(pattern: str) -> str:
    cut = min((pattern.index(c) for c in GLOB_CHARS if c in pattern), default=len(pattern))
    return pattern[:cut]


def _may_share_prefix(prefix: str, pattern: str) -> bool:
    """Whether ``pattern`` might match a name starting with ``prefix``
    (conservative: compares the literal parts only)."""
    if not is_glob(pattern):
        return pattern.startswith(prefix)
    lit = _literal_part(pattern)
    return lit.startswith(prefix) or prefix.startswith(lit)


def _claimed_before(name: str, earlier: Sequence[FlowtableConfig]) -> str | None:
    """The earlier flowtable that would or might take a device called ``name``."""
    for sel in earlier:
        by_name = (not sel.devices
                   or any(fnmatch.fnmatchcase(name, p) for p in sel.devices))
        if by_name and not any(fnmatch.fnmatchcase(name, p) for p in sel.exclude):
            return sel.name
    return None


def _not_a_wildcard(pattern: str, sel: FlowtableConfig, config: Config) -> str | None:
    """Why ``pattern`` of ``sel`` cannot be a kernel wildcard; None if it can."""
    prefix = wildcard_prefix(pattern)
    if prefix is None:
        if not _PREFIX_GLOB.match(pattern):
            return 'only prefix patterns ("name*") can be kernel wildcards'
        if len(pattern.encode()) > IFNAME_MAX:
            return f"longer than {IFNAME_MAX} bytes, too long for a kernel wildcard"
        return "its prefix cannot be written in an nft script"
    for x in sel.exclude:
        if _may_share_prefix(prefix, x):
            return (f'exclude "{x}" may match devices starting with "{prefix}", which the '
                    "kernel would hook all the same")
    for other in config.flowtables:
        if other.name == sel.name:
            continue
        if not other.devices or any(_may_share_prefix(prefix, p) for p in other.devices):
            return f'flowtable {other.name!r} may take devices starting with "{prefix}"'
    return None


def _wildcards(sel: FlowtableConfig, config: Config
               ) -> tuple[list[str], list[str], list[str]]:
    """(wildcards to declare, patterns covered by a shorter one, patterns left
    to offloadd with why) for a flowtable the kernel may attach."""
    candidates: list[str] = []
    kept: list[str] = []
    for p in sel.devices:
        if not is_glob(p):
            continue
        why = _not_a_wildcard(p, sel, config)
        if why is None:
            candidates.append(p)
        else:
            kept.append(f'"{p}" attached by offloadd: {why}')
    # "wan*" next to "wa*" is the same hook twice, which the kernel refuses
    # in one list (EEXIST): the shorter prefix covers it.
    declared: list[str] = []
    covered: list[str] = []
    for p in candidates:
        by = wildcard_covering([c for c in candidates if c != p], p[:-1])
        if by is None:
            declared.append(p)
        else:
            covered.append(f"{p} ({by})")
    return declared, covered, kept


@dataclass(frozen=True)
class KernelHooks:
    """What the running kernel was found to do with flowtable device names
    (probed once at start, offloadd.kernel.capability.probe_hooks): hook a name
    ahead of its device, and hook by prefix. An immutable value handed to the
    daemon and to the check preview alike."""

    name_hooks: bool = False
    name_hooks_reason: str = "not probed"
    wildcards: bool = False
    wildcards_reason: str = "not probed"


def attach_plan(config: Config, name_hooks: bool,
                no_hooks_reason: str = "the kernel has no name hooks (Linux < 6.16)",
                wildcards: bool = False,
                no_wildcards_reason: str = "kernel wildcards are not used",
                ) -> tuple[FlowtableAttach, ...]:
    """Per configured flowtable: which exact names and (with ``wildcards``)
    which prefix patterns to declare, and why (not)."""
    out: list[FlowtableAttach] = []
    for i, sel in enumerate(config.flowtables):
        why = no_hooks_reason if not name_hooks else _daemon_only(sel)
        if why is not None:
            out.append(FlowtableAttach(sel.name, AttachMode.DAEMON, why))
        else:
            out.append(_declared(config, i, wildcards, no_wildcards_reason))
    return tuple(out)


def _daemon_only(sel: FlowtableConfig) -> str | None:
    """Why the kernel can attach nothing of ``sel`` by itself, if so."""
    if sel.hardware is not Hardware.OFF:
        return (f'hardware = "{sel.hardware.value}": whether a device goes to the hardware '
                "or the software flowtable is known only when it appears")
    if sel.kinds:
        return f"kinds = {sorted(sel.kinds)}: the kernel would hook a name whatever its kind"
    return None


def _declared(config: Config, i: int, wildcards: bool, no_wildcards_reason: str
              ) -> FlowtableAttach:
    """What flowtable ``i`` (hardware off, no kinds) declares to the kernel."""
    sel = config.flowtables[i]
    patterns = [p for p in sel.devices if is_glob(p)]
    wild: list[str] = []
    covered: list[str] = []
    kept: list[str] = []
    if wildcards:
        wild, covered, kept = _wildcards(sel, config)
    declared: list[str] = []
    skipped: list[str] = []
    for name in (p for p in sel.devices if not is_glob(p)):
        # Listed beside a wildcard that covers it, the kernel would take the
        # name for the same hook (EEXIST, or dropped on an update).
        by = wildcard_covering(wild, name)
        if by is not None:
            covered.append(f"{name} ({by})")
        elif any(fnmatch.fnmatchcase(name, p) for p in sel.exclude):
            skipped.append(f"{name} (excluded)")
        elif (before := _claimed_before(name, config.flowtables[:i])) is not None:
            skipped.append(f"{name} (flowtable {before!r} may take it)")
        else:
            declared.append(name)
    parts = []
    if declared:
        parts.append(f"{', '.join(declared)} declared to the kernel ahead of the device")
    if wild:
        parts.append(f"wildcards {', '.join(wild)} declared to the kernel: it hooks every "
                     "device whose name starts with the prefix, present or to come")
    if covered:
        parts.append(f"covered by a wildcard: {', '.join(covered)}")
    if patterns and not wildcards:
        kept.append(f"patterns {', '.join(patterns)} attached by offloadd "
                    f"({no_wildcards_reason})")
    parts.extend(kept)
    if skipped:
        parts.append(f"attached by offloadd: {', '.join(skipped)}")
    if not sel.devices:
        parts.append("no device names, only kinds or every device: attached by offloadd")
    if sel.stack is not Stack.AS_LISTED and (declared or wild):
        # A name declared ahead is hooked the moment its device appears; what
        # is beneath it (a bridge's ports, a VLAN's device) is known only then.
        parts.append(f'stack = "{sel.stack.value}": the devices beneath a stacked one '
                     "attached by offloadd when it appears")
    if not declared and not wild:
        mode = AttachMode.DAEMON
    elif skipped or kept:
        mode = AttachMode.MIXED
    else:
        mode = AttachMode.KERNEL
    return FlowtableAttach(sel.name, mode, "; ".join(parts), tuple(declared), tuple(wild))
