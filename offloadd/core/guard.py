"""The stack guard: never leave flows offloaded into a black hole.

Why: with ``stack = "lower"`` or ``"both"`` the kernel's flowtable sends a
flow's packets through the device beneath a bridge, VLAN or PPPoE device and
does that layer's work itself. Whether that forwards is a property of the
running kernel and of the path (the lab measured every path forwarding on
6.1, 6.12 and 7.3.4; and a 7.x black hole where a LAN host's unfinished
checksums went through PPPoE to a peer that does not finish them), so it is
established on the running system, never guessed from a version: offloaded
flows are watched through their conntrack counters, which the flowtable
keeps per direction.

A flow is offloaded only after a packet of each direction passed the
forward chains (the gate), so an offloaded flow had answers. The signature
of a black hole is flows crossing one stacked device whose packets keep
coming in one direction while the other direction stays flat, and no flow
through that device that still gets both. When that holds in
``looks`` consecutive looks, the device's fast path beneath it is refused:
offloadd attaches the device itself again (what ``as-listed`` does) and
frees the flows the old path held. Flows that merely went quiet, or one
flow that lost its peer, do not count: a one-way flow needs ``min_packets``
in a look, and a device needs ``min_flows`` of them and no healthy flow.

Pure: the counts come from a conntrack dump and the routing table elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FlowCounts:
    """One offloaded flow's packet counters and the devices it crosses (the
    routes towards its two ends)."""

    id: int
    orig_packets: int
    reply_packets: int
    devices: frozenset[str]


@dataclass(frozen=True)
class Look:
    at: float
    flows: Mapping[int, FlowCounts] = field(default_factory=dict)


@dataclass(frozen=True)
class GuardPolicy:
    # Packets one direction must carry in a look, with none the other way,
    # for the flow to count as one-way.
    min_packets: int = 10
    # One-way flows through a device (and no flow that gets both ways) for
    # a look to count against it.
    min_flows: int = 2
    # Consecutive looks against a device before its fast path beneath is refused.
    looks: int = 2


@dataclass(frozen=True)
class Evidence:
    """What one look found for one watched device."""

    one_way: int = 0
    both_ways: int = 0
    idle: int = 0

    @property
    def suspect(self) -> bool:
        return self.one_way > 0 and self.both_ways == 0


def evidence(prev: Look, now: Look, watched: Iterable[str],
             policy: GuardPolicy) -> dict[str, Evidence]:
    """Per watched device, the flows through it seen in both looks, by what
    their counters did in between."""
    counts = {dev: [0, 0, 0] for dev in watched}
    for fid, flow in now.flows.items():
        before = prev.flows.get(fid)
        if before is None:
            continue
        d_orig = flow.orig_packets - before.orig_packets
        d_reply = flow.reply_packets - before.reply_packets
        if d_orig < 0 or d_reply < 0:
            continue  # not the same entry (an id reused)
        if d_orig > 0 and d_reply > 0:
            kind = 1
        elif max(d_orig, d_reply) >= policy.min_packets and min(d_orig, d_reply) == 0:
            kind = 0
        else:
            kind = 2
        for dev in flow.devices & counts.keys():
            counts[dev][kind] += 1
    return {dev: Evidence(*c) for dev, c in counts.items()}


@dataclass(frozen=True)
class GuardState:
    """Consecutive suspect looks per device, and the devices refused with why."""

    suspect: Mapping[str, int] = field(default_factory=dict)
    refused: Mapping[str, str] = field(default_factory=dict)


def judge(state: GuardState, found: Mapping[str, Evidence],
          policy: GuardPolicy) -> tuple[GuardState, dict[str, str]]:
    """The next state and the devices newly refused (device -> reason)."""
    suspect: dict[str, int] = {}
    new: dict[str, str] = {}
    for dev, ev in found.items():
        if dev in state.refused:
            continue
        if ev.suspect and ev.one_way >= policy.min_flows:
            n = state.suspect.get(dev, 0) + 1
            if n >= policy.looks:
                new[dev] = (f"{ev.one_way} offloaded flow(s) through {dev} carried packets one "
                            f"way only and none both ways, {n} looks in a row (a black hole "
                            "beneath it): its fast path beneath is refused, the device "
                            "itself is used")
            else:
                suspect[dev] = n
    return GuardState(suspect=suspect, refused={**state.refused, **new}), new
