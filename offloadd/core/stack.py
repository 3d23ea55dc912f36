"""The devices beneath a selected device: what the kernel's fast path needs.

Why: since Linux 5.13 the flowtable resolves the real device behind a bridge,
a VLAN and a PPPoE session (dev_fill_forward_path) and then does that layer's
work itself, but only when the resolved device is in the flowtable
(nft_dev_forward_path); otherwise the flow keeps the upper device and every
packet still crosses the bridge, VLAN and PPPoE code. Measured in the lab
(README, Real gateways): on 6.12 the upper devices offload but run through
those layers, the lower ones skip them; on 7.x a bridge's flows are offloaded
only with its ports listed. offloadd selects devices by name, so this module
walks the stack from rtnetlink's facts (a VLAN's lower device, a bridge's
ports) and the PPPoE sessions of the namespace, and says which devices a
selected one stands for.

Pure: the links and the sessions are read elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # model uses this module: no import at run time
    from offloadd.core.model import Link

# A stack deeper than this is a loop in the facts (the kernel allows at most
# two encapsulations in a flow's path anyway).
MAX_DEPTH = 8


@dataclass(frozen=True)
class Path:
    """One way down from a selected device to a device the kernel can hook
    for the fast path: ``("ppp0", "eth1.7", "eth1")``."""

    names: tuple[str, ...]

    @property
    def bottom(self) -> str:
        return self.names[-1]

    def __str__(self) -> str:
        return " → ".join(self.names)


@dataclass(frozen=True)
class Resolved:
    """What a selected device stands for: its paths down (one per bottom
    device; just itself when nothing is beneath it), and why not further,
    when the facts stop short (a PPPoE device whose session is not known)."""

    device: str
    paths: tuple[Path, ...]
    note: str = ""

    @property
    def bottoms(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.bottom for p in self.paths))

    @property
    def stacked(self) -> bool:
        """Whether anything is beneath the device."""
        return any(len(p.names) > 1 for p in self.paths)


@dataclass(frozen=True)
class PppoeSessions:
    """The PPPoE sessions of the namespace: the Ethernet device of each
    (/proc/net/pppoe lists the session's device but not its ppp unit)."""

    devices: tuple[str, ...] = ()
    # The session ids (hex, as listed): a new one means a new session.
    ids: tuple[str, ...] = ()

    def device_for(self, ppp: str, ppp_devices: Sequence[str]) -> tuple[str | None, str]:
        """The Ethernet device beneath ``ppp``, or None and why not.

        Unambiguous when every session runs over one device (one PPPoE
        uplink, the usual case: then every ppp device is either that
        session's or not PPPoE at all, and listing the device is right for
        the first and harmless for the second). With sessions over several
        devices the kernel does not say which ppp unit is which session, so
        none is resolved rather than a wrong one.
        """
        devices = sorted(set(self.devices))
        if not devices:
            return None, f"{ppp}: no PPPoE session in this namespace (PPPoA, L2TP, or not up)"
        if len(devices) == 1:
            return devices[0], ""
        return None, (f"{ppp}: PPPoE sessions over {', '.join(devices)} and "
                      f"{len(ppp_devices)} ppp device(s); which session is {ppp}'s is not "
                      "known, so it is used as it is")


def parse_pppoe(text: str) -> PppoeSessions:
    """/proc/net/pppoe: a header, then ``Id Address Device`` per session."""
    devices = []
    ids = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3:
            devices.append(fields[-1])
            ids.append(fields[0])
    return PppoeSessions(tuple(devices), tuple(ids))


def stack_identities(stacks: Iterable[Resolved], index: Mapping[str, int],
                     kinds: Mapping[str, str | None],
                     pppoe: PppoeSessions) -> dict[str, tuple[int, tuple[str, ...]]]:
    """Per stacked device: what it is now (its ifindex; for a ppp device also
    the PPPoE sessions). When that changes while the devices beneath stay,
    the flows the flowtable holds for it carry the old stack's encapsulation
    (the kernel's direct path pushes the VLAN tag and PPPoE session it
    resolved when the flow was offloaded, and frees nothing when the upper
    device goes: it keys flows on the devices beneath)."""
    out: dict[str, tuple[int, tuple[str, ...]]] = {}
    for r in stacks:
        if r.stacked and r.device in index:
            sessions = tuple(sorted(pppoe.ids)) if kinds.get(r.device) == "ppp" else ()
            out[r.device] = (index[r.device], sessions)
    return out


def stale_stacks(before: Mapping[str, tuple[int, tuple[str, ...]]],
                 after: Mapping[str, tuple[int, tuple[str, ...]]],
                 present: Iterable[str], bottoms: Mapping[str, Iterable[str]],
                 listed: Iterable[str]) -> tuple[str, ...]:
    """Stacked devices whose offloaded flows are stale: one that came back as
    another device or session (a PPPoE reconnect: pppd deletes ppp0 and
    creates a new one within a second, a new session beneath it), and one
    that went while a device beneath it (``bottoms``, as before) is still
    ``listed`` in a flowtable. One that went with the devices beneath it
    leaving the flowtables needs nothing: the kernel frees the flows of a
    device it unhooks. One still there but no longer used through its stack
    (the guard refused that path) is not stale: its own change frees what it
    needs."""
    here, kept = frozenset(present), frozenset(listed)
    return tuple(sorted(
        dev for dev, ident in before.items()
        if (dev in after and after[dev] != ident)
        or (dev not in here and any(b in kept for b in bottoms.get(dev, ())))))


def resolve(device: Link, links: Iterable[Link],
            pppoe: PppoeSessions = PppoeSessions()) -> Resolved:
    """The paths from ``device`` down to the devices the kernel's forward
    path ends on: a VLAN's lower device, a bridge's ports, a PPPoE session's
    Ethernet device, each followed down again. Anything else (WireGuard,
    bonds, tunnels, plain Ethernet) is a bottom itself: the kernel resolves
    nothing beneath it. A bridge without ports has no path (nothing beneath
    it carries a packet)."""
    all_links = tuple(links)
    by_index = {link.index: link for link in all_links}
    by_name = {link.name: link for link in all_links}
    ports: dict[int, list[Link]] = {}
    for link in all_links:
        if link.master is not None:
            ports.setdefault(link.master, []).append(link)
    ppp_names = sorted(link.name for link in all_links if link.kind == "ppp")
    notes: list[str] = []

    def below(link: Link) -> list[Link] | None:
        """The devices right beneath ``link``; None: it is a bottom."""
        if link.kind == "vlan" and link.lower in by_index:
            return [by_index[link.lower]]
        if link.kind == "bridge":
            return sorted(ports.get(link.index, ()), key=lambda x: x.name)
        if link.kind == "ppp":
            name, why = pppoe.device_for(link.name, ppp_names)
            if name is not None and name in by_name:
                return [by_name[name]]
            if why:
                notes.append(why)
        return None

    def walk(link: Link, trail: tuple[str, ...]) -> list[Path]:
        trail = (*trail, link.name)
        nxt = below(link) if len(trail) <= MAX_DEPTH else None
        if nxt is None:
            return [Path(trail)]
        return [p for lower in nxt if lower.name not in trail for p in walk(lower, trail)]

    paths = walk(device, ())
    return Resolved(device.name, tuple(paths), "; ".join(dict.fromkeys(notes)))


def resolve_all(selected: Iterable[Link], links: Iterable[Link],
                pppoe: PppoeSessions = PppoeSessions()) -> Mapping[str, Resolved]:
    """resolve() for each selected device, by name."""
    all_links = tuple(links)
    return {link.name: resolve(link, all_links, pppoe) for link in selected}
