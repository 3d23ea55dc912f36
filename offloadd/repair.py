"""When to replace a flowtable whose flows the kernel left behind (pure).

Why: on Linux 7.3 a route cache flush (any device unregistered, or
``net.ipv4.route.flush``) clears the offload mark of every IPv4 flow while
the flowtable keeps its entry for it. The flowtable goes on forwarding the
flow, so ``flow add`` can never offload it again (the entry exists); conntrack
shows it without ``[OFFLOAD]``, with the day-long timeout
the offload gave it, and it leaves every offload count, the timeout fix-up and
any later policy check. Replacing the flowtable in one transaction frees the
entries; each flow's next packet takes the forward path once and is offloaded
again under the same conntrack entry. Older kernels (6.1, 6.12) tear such a
flow down and offload it again by themselves: nothing is left behind there,
so nothing is repaired.

This module decides from scans alone (no kernel access): which flowtables to
replace now, which to hold back (rate limit, or a repair that did not help),
and when to look again. A repair that leaves the same entries behind is not
retried at once: the cause is then something a replacement does not fix, and
repeating it would only cost every flow of the flowtable a slow-path packet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

# nf_conntrack.h: an offloaded entry's timeout is pushed to a day whenever it
# falls below half of that (nf_ct_offload_timeout). Nothing else sets it there
# for UDP, and a torn-down flow's fix-up sets the protocol's own timeout.
NF_CT_DAY_S = 86400
IPS_OFFLOAD = 1 << 14


def left_behind(status: int, timeout: int | None, use: int | None) -> bool:
    """A conntrack entry a flowtable still holds that no longer counts as offloaded.

    Not offloaded, yet with the offload's day-long timeout (only
    nf_ct_offload_timeout sets one between half a day and a day: a UDP entry
    never gets that long otherwise, an established TCP entry on the slow path
    is refreshed to 5 days at each packet) and a second reference (the
    flowtable entry's; an entry no flowtable holds has use 1). A flow torn
    down properly gets its protocol timeout back first. [ASSURED] and even a
    reply are not required: a UDP flow offloaded within its first 2 s is
    never assured, and kernels offload unreplied UDP flows (offloadd's own
    rule no longer asks them to, tables from before may have).
    """
    return (not status & IPS_OFFLOAD
            and timeout is not None and NF_CT_DAY_S // 2 < timeout <= NF_CT_DAY_S
            and use is not None and use >= 2)


@dataclass(frozen=True)
class Scan:
    """Entries left behind at one moment, by the flowtable of offloadd's that holds them."""

    at: float  # monotonic seconds
    by_flowtable: Mapping[str, frozenset[int]] = field(default_factory=dict)  # conntrack ids
    unattributed: int = 0  # left behind, but not through any of offloadd's devices

    @property
    def flows(self) -> int:
        return sum(len(ids) for ids in self.by_flowtable.values())


@dataclass(frozen=True)
class RepairPolicy:
    min_interval_s: float = 1.5  # between two repairs of one flowtable
    settle_s: float = 1.0  # after a repair, before its result is judged
    backoff_s: float = 60.0  # first hold-off after a repair that did not help
    backoff_max_s: float = 900.0


@dataclass(frozen=True)
class FlowtableRecord:
    last_repair: float | None = None
    unverified: frozenset[int] = frozenset()  # ids the last repair should have freed
    hold_until: float = 0.0
    backoff_s: float = 0.0


@dataclass(frozen=True)
class Held:
    flowtable: str
    reason: str


@dataclass(frozen=True)
class Decision:
    repair: tuple[str, ...]
    held: tuple[Held, ...]
    ineffective: tuple[Held, ...]  # repairs judged not to have helped (logged once)
    records: Mapping[str, FlowtableRecord]
    recheck_in: float | None  # seconds until a scan is worth doing again, if any


def decide(records: Mapping[str, FlowtableRecord], scan: Scan,
           policy: RepairPolicy = RepairPolicy()) -> Decision:
    """Which flowtables to replace after ``scan``, given what earlier repairs did."""
    out = dict(records)
    repair: list[str] = []
    held: list[Held] = []
    ineffective: list[Held] = []
    recheck: list[float] = []
    for name in sorted(set(records) | set(scan.by_flowtable)):
        rec = records.get(name, FlowtableRecord())
        ids = scan.by_flowtable.get(name, frozenset())
        if rec.unverified and rec.last_repair is not None:
            if scan.at < rec.last_repair + policy.settle_s:
                recheck.append(rec.last_repair + policy.settle_s - scan.at)
                continue
            still = ids & rec.unverified
            if still:
                backoff = min(max(rec.backoff_s * 2, policy.backoff_s), policy.backoff_max_s)
                ineffective.append(Held(name, (
                    f"{len(still)} of the {len(rec.unverified)} entries are still left "
                    f"behind after replacing the flowtable; not retried for {backoff:.0f} s")))
                rec = replace(rec, unverified=frozenset(), hold_until=scan.at + backoff,
                              backoff_s=backoff)
            else:
                rec = replace(rec, unverified=frozenset(), backoff_s=0.0)
        if ids:
            if scan.at < rec.hold_until:
                held.append(Held(name, f"{len(ids)} entries left behind; a repair did not "
                                       f"help, next try in {rec.hold_until - scan.at:.0f} s"))
                recheck.append(rec.hold_until - scan.at)
            elif (rec.last_repair is not None
                  and scan.at - rec.last_repair < policy.min_interval_s):
                wait = rec.last_repair + policy.min_interval_s - scan.at
                held.append(Held(name, f"{len(ids)} entries left behind; repaired "
                                       f"{scan.at - rec.last_repair:.1f} s ago, "
                                       f"next repair in {wait:.1f} s"))
                recheck.append(wait)
            else:
                rec = replace(rec, last_repair=scan.at, unverified=ids)
                repair.append(name)
                recheck.append(policy.settle_s)
        out[name] = rec
    return Decision(tuple(repair), tuple(held), tuple(ineffective), out,
                    min(recheck) if recheck else None)
