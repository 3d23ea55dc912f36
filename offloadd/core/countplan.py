"""Which conntrack dumps count the offloaded flows most cheaply.

Why: a dump costs the kernel little for an entry its status filter keeps back
and much for one it sends (serialised, copied, tallied). At 1M offloaded flows
under the lab's TCG the direct count (every offloaded entry sent) took ~8 s of
CPU and 20 s of wall time beside the flowtable's own walks, so the count a
scrape got was up to 46-88 s old against a 15-s period. Where most entries are
offloaded, the entries *not* offloaded are few: dumping those and one family's
offloaded entries, the other family's offloaded count is the table's total
(``nf_conntrack_count``, which the kernel keeps) minus what was dumped. The
choice follows the last count, so each box pays for the smaller side.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

# What the kernel spends walking past an entry a dump's filter keeps back, in
# units of an entry it sends: 1M entries under TCG, 0.8 s of CPU for a dump
# that sends none (the left-behind check) vs ~8 s for one that sends them all.
SKIP_COST = 0.1


@dataclass(frozen=True)
class Estimate:
    """The last count: offloaded entries per family, and the table's total now."""

    ipv4: int
    ipv6: int
    total: int

    @property
    def not_offloaded(self) -> int:
        return max(0, self.total - self.ipv4 - self.ipv6)


def direct_cost(e: Estimate) -> float:
    """Two dumps (offloaded, hardware), each walking the table, one sending
    every offloaded entry."""
    return e.ipv4 + e.ipv6 + 2 * SKIP_COST * e.total


def derived_cost(e: Estimate, family: int) -> float:
    """Three dumps (not offloaded, this family's offloaded, hardware)."""
    walked = e.ipv6 if family == socket.AF_INET6 else e.ipv4
    return e.not_offloaded + walked + 3 * SKIP_COST * e.total


def walk_family(last: Estimate | None) -> int:
    """AF_UNSPEC: count directly; AF_INET / AF_INET6: dump that family's offloaded
    entries with the ones not offloaded, and derive the other family's.

    Without a last count (the first walk): derived, dumping IPv6 — the boxes where
    the count's cost matters are the ones with most entries offloaded, mostly
    IPv4; the next walk corrects a wrong guess.
    """
    if last is None:
        return int(socket.AF_INET6)
    best, cost = int(socket.AF_UNSPEC), direct_cost(last)
    for fam in (int(socket.AF_INET6), int(socket.AF_INET)):
        c = derived_cost(last, fam)
        if c < cost:
            best, cost = fam, c
    return best
