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
    family: int = 4  # 4 or 6: a path can swallow one family's flows only


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
    family: int | None = None  # the family that is suspect, if one is

    @property
    def suspect(self) -> bool:
        return self.one_way > 0 and self.both_ways == 0


def evidence(prev: Look, now: Look, watched: Iterable[str],
             policy: GuardPolicy) -> dict[str, Evidence]:
    """Per watched device, the flows through it seen in both looks, by what
    their counters did in between. Counted per family, since a path can
    swallow one family's flows and carry the other's: a device is judged by
    a family whose flows are suspect (the one with most one-way flows), else
    by all its flows."""
    counts: dict[tuple[str, int], list[int]] = {}
    wanted = frozenset(watched)
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
        for dev in flow.devices & wanted:
            counts.setdefault((dev, flow.family), [0, 0, 0])[kind] += 1
    out: dict[str, Evidence] = {}
    for dev in wanted:
        fams = {fam: Evidence(one_way=c[0], both_ways=c[1], idle=c[2], family=fam)
                for (d, fam), c in counts.items() if d == dev}
        bad = [ev for ev in fams.values() if ev.suspect and ev.one_way >= policy.min_flows]
        if bad:
            out[dev] = max(bad, key=lambda ev: ev.one_way)
        else:
            out[dev] = Evidence(one_way=sum(ev.one_way for ev in fams.values()),
                                both_ways=sum(ev.both_ways for ev in fams.values()),
                                idle=sum(ev.idle for ev in fams.values()))
    return out


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
                fam = f" IPv{ev.family}" if ev.family else ""
                new[dev] = (f"{ev.one_way} offloaded{fam} flow(s) through {dev} carried packets "
                            f"one way only and none both ways, {n} looks in a row (a black hole "
                            "beneath it): its fast path beneath is refused, the device "
                            "itself is used")
            else:
                suspect[dev] = n
    return GuardState(suspect=suspect, refused={**state.refused, **new}), new
