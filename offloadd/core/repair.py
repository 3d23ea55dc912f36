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

from offloadd.core.flows import IPS_OFFLOAD

# nf_conntrack.h: an offloaded entry's timeout is pushed to a day whenever it
# falls below half of that (nf_ct_offload_timeout). Nothing else sets it there
# for UDP, and a torn-down flow's fix-up sets the protocol's own timeout.
NF_CT_DAY_S = 86400


# A flowtable's entry holds a reference of its own beside conntrack's.
HELD_MIN_USE = 2


def held_without_offload(status: int, timeout: int | None, use: int | None) -> bool:
    """An entry some flowtable holds (a second reference) that is not marked offloaded.

    A candidate only: a flow torn down properly is held like this until the
    flowtable's garbage collection (about a second), and a packet in flight
    holds a reference too. ``left_behind`` judges.
    """
    return (not status & IPS_OFFLOAD and timeout is not None and use is not None
            and use >= HELD_MIN_USE)


def day_timeout(timeout: int) -> bool:
    """The offload's timeout: only nf_ct_offload_timeout sets one between half a
    day and a day (a UDP entry never gets that long otherwise; an established
    TCP entry on the slow path is refreshed to 5 days at each packet)."""
    return NF_CT_DAY_S // 2 < timeout <= NF_CT_DAY_S


@dataclass(frozen=True)
class HeldEntry:
    timeout: int  # seconds left
    flowtable: str | None  # offloadd's flowtable that holds it; None: not through its devices


@dataclass(frozen=True)
class Scan:
    """Entries not offloaded yet held by a flowtable, at one moment (conntrack id -> entry)."""

    at: float  # monotonic seconds
    held: Mapping[int, HeldEntry] = field(default_factory=dict)


def left_behind(scan: Scan, previous: Scan | None,
                min_gap_s: float = 2.0) -> dict[str, frozenset[int]]:
    """Entries of offloadd's flowtables the kernel left behind, by flowtable.

    Two signs, either enough: the offload's day-long timeout on an entry no
    longer marked offloaded (7.3 after a route cache flush: the flow entry
    stays and keeps forwarding; measured 86392 s, use 2), or an entry held
    across two scans at least ``min_gap_s`` apart whose timeout ran down at
    the clock's pace (conntrack saw none of its packets: the flowtable
    forwards them; also seen on 7.3, with the flow's normal timeout). A
    properly torn-down flow is released by the flowtable's garbage
    collection well within the gap, and its timeout is reset, not run down.
    """
    gap = scan.at - previous.at if previous is not None else 0.0
    out: dict[str, set[int]] = {}
    for ct_id, e in scan.held.items():
        if e.flowtable is None:
            continue
        before = previous.held.get(ct_id) if previous is not None else None
        # Ran down at the clock's pace: not refreshed (a packet seen) and not
        # reset lower either (a teardown's fix-up: the flow is in transit
        # between two flowtable entries, as right after a replacement).
        stale = (before is not None and gap >= min_gap_s
                 and abs(before.timeout - e.timeout - gap) <= 1.5)
        if day_timeout(e.timeout) or stale:
            out.setdefault(e.flowtable, set()).add(ct_id)
    return {k: frozenset(v) for k, v in out.items()}


def pending_second_look(scan: Scan, previous: Scan | None,
                        found: Mapping[str, frozenset[int]], min_gap_s: float) -> bool:
    """Whether held entries of offloadd's are still unjudged after ``scan``.

    An entry is judged once two scans at least ``min_gap_s`` apart have seen
    it (left behind, or refreshed: a flow conntrack keeps seeing). Asking
    again for judged ones would poll every 2 s for as long as such a flow
    lives; an entry seen before but too recently (the check right after a
    repair) still needs its second look.
    """
    judged = {i for ids in found.values() for i in ids}
    if previous is not None and scan.at - previous.at >= min_gap_s:
        judged |= set(previous.held)
    return any(e.flowtable is not None and i not in judged for i, e in scan.held.items())


@dataclass(frozen=True)
class RepairPolicy:
    min_interval_s: float = 1.5  # between two repairs of one flowtable
    settle_s: float = 1.0  # after a repair, before its result is judged
    backoff_s: float = 60.0  # first hold-off after a repair that did not help
    backoff_max_s: float = 900.0
    stale_gap_s: float = 1.5  # two scans this far apart tell a stale entry (left_behind)


@dataclass(frozen=True)
class FlowtableRecord:
    last_repair: float | None = None
    unverified: frozenset[int] = frozenset()  # ids the last repair should have freed
    hold_until: float = 0.0
    backoff_s: float = 0.0


@dataclass(frozen=True)
class HeldBack:
    flowtable: str
    reason: str


@dataclass(frozen=True)
class Decision:
    repair: tuple[str, ...]
    held: tuple[HeldBack, ...]
    ineffective: tuple[HeldBack, ...]  # repairs judged not to have helped (logged once)
    records: Mapping[str, FlowtableRecord]
    recheck_in: float | None  # seconds until a scan is worth doing again, if any


def decide(records: Mapping[str, FlowtableRecord], at: float,
           found: Mapping[str, frozenset[int]],
           policy: RepairPolicy = RepairPolicy()) -> Decision:
    """Which flowtables to replace, given the entries ``found`` left behind at
    time ``at`` (see left_behind) and what earlier repairs did."""
    out = dict(records)
    repair: list[str] = []
    held: list[HeldBack] = []
    ineffective: list[HeldBack] = []
    recheck: list[float] = []
    for name in sorted(set(records) | set(found)):
        rec = records.get(name, FlowtableRecord())
        ids = found.get(name, frozenset())
        if rec.unverified and rec.last_repair is not None:
            if at < rec.last_repair + policy.settle_s:
                recheck.append(rec.last_repair + policy.settle_s - at)
                continue
            still = ids & rec.unverified
            if still:
                backoff = min(max(rec.backoff_s * 2, policy.backoff_s), policy.backoff_max_s)
                ineffective.append(HeldBack(name, (
                    f"{len(still)} of the {len(rec.unverified)} entries are still left "
                    f"behind after replacing the flowtable; not retried for {backoff:.0f} s")))
                rec = replace(rec, unverified=frozenset(), hold_until=at + backoff,
                              backoff_s=backoff)
            else:
                rec = replace(rec, unverified=frozenset(), backoff_s=0.0)
        if ids:
            if at < rec.hold_until:
                held.append(HeldBack(name, f"{len(ids)} entries left behind; a repair did not "
                                       f"help, next try in {rec.hold_until - at:.0f} s"))
                recheck.append(rec.hold_until - at)
            elif (rec.last_repair is not None
                  and at - rec.last_repair < policy.min_interval_s):
                wait = rec.last_repair + policy.min_interval_s - at
                held.append(HeldBack(name, f"{len(ids)} entries left behind; repaired "
                                       f"{at - rec.last_repair:.1f} s ago, "
                                       f"next repair in {wait:.1f} s"))
                recheck.append(wait)
            else:
                rec = replace(rec, last_repair=at, unverified=ids)
                repair.append(name)
                recheck.append(policy.settle_s)
        out[name] = rec
    return Decision(tuple(repair), tuple(held), tuple(ineffective), out,
                    min(recheck) if recheck else None)
