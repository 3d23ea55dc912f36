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
"""

from __future__ import annotations

import enum
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from offloadd.core.config import Config, FlowtableConfig, Hardware

GLOB_CHARS = frozenset("*?[")


class AttachMode(enum.Enum):
    KERNEL = "kernel"  # every configured name declared; the kernel hooks each device itself
    MIXED = "mixed"  # exact names declared, patterns attached by offloadd
    DAEMON = "daemon"  # offloadd attaches each device when it sees it


@dataclass(frozen=True)
class FlowtableAttach:
    """How one configured flowtable's devices get attached, and why."""

    flowtable: str
    mode: AttachMode
    reason: str
    declared: tuple[str, ...] = ()  # names given to the kernel ahead of their device


def is_glob(pattern: str) -> bool:
    return any(c in GLOB_CHARS for c in pattern)


def _claimed_before(name: str, earlier: Sequence[FlowtableConfig]) -> str | None:
    """The earlier flowtable that would or might take a device called ``name``."""
    for sel in earlier:
        by_name = (not sel.devices
                   or any(fnmatch.fnmatchcase(name, p) for p in sel.devices))
        if by_name and not any(fnmatch.fnmatchcase(name, p) for p in sel.exclude):
            return sel.name
    return None


def attach_plan(config: Config, name_hooks: bool,
                no_hooks_reason: str = "the kernel has no name hooks (Linux < 6.16)"
                ) -> tuple[FlowtableAttach, ...]:
    """Per configured flowtable: which exact names to declare, and why (not)."""
    out: list[FlowtableAttach] = []
    for i, sel in enumerate(config.flowtables):
        daemon = AttachMode.DAEMON
        if not name_hooks:
            out.append(FlowtableAttach(sel.name, daemon, no_hooks_reason))
            continue
        if sel.hardware is not Hardware.OFF:
            out.append(FlowtableAttach(sel.name, daemon, (
                f'hardware = "{sel.hardware.value}": whether a device goes to the hardware '
                "or the software flowtable is known only when it appears")))
            continue
        if sel.kinds:
            out.append(FlowtableAttach(sel.name, daemon, (
                f"kinds = {sorted(sel.kinds)}: the kernel would hook a name whatever its "
                "kind")))
            continue
        exact = [p for p in sel.devices if not is_glob(p)]
        patterns = [p for p in sel.devices if is_glob(p)]
        declared: list[str] = []
        skipped: list[str] = []
        for name in exact:
            if any(fnmatch.fnmatchcase(name, p) for p in sel.exclude):
                skipped.append(f"{name} (excluded)")
                continue
            before = _claimed_before(name, config.flowtables[:i])
            if before is not None:
                skipped.append(f"{name} (flowtable {before!r} may take it)")
                continue
            declared.append(name)
        parts = []
        if declared:
            parts.append(f"{', '.join(declared)} declared to the kernel ahead of the device")
        if patterns:
            parts.append(f"patterns {', '.join(patterns)} attached by offloadd "
                         "(kernel wildcards are not used)")
        if skipped:
            parts.append(f"attached by offloadd: {', '.join(skipped)}")
        if not sel.devices:
            parts.append("no device names, only kinds or every device: attached by offloadd")
        if not declared:
            mode = daemon
        elif patterns or skipped:
            mode = AttachMode.MIXED
        else:
            mode = AttachMode.KERNEL
        out.append(FlowtableAttach(sel.name, mode, "; ".join(parts), tuple(declared)))
    return tuple(out)
