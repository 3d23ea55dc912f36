"""offloadd's table as the event loop last read it, for readers on other threads.

Why: a scrape that read the table itself spent half its time in the three
libnftables calls of a read (46 of ~90 ms under the lab's TCG, more on a box
whose CPU a million flows keep busy), while the event loop reads the same
table at every pass, verify, repair and periodic check, and whenever
nf_tables announces a change to it. So a scrape serves the loop's latest read
while it is recent, and reads the kernel itself only when the loop has not
(before its first pass, or stuck in a long transaction).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from offloadd.core.model import TableState


@dataclass(frozen=True)
class Seen:
    at: float  # the clock's seconds (monotonic)
    table: TableState | None  # None: there was no table


class TableSeen:
    """The latest read, replaced whole (one reference: no lock for its readers)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._seen: Seen | None = None

    def record(self, table: TableState | None) -> None:
        self._seen = Seen(self._clock(), table)

    def recent(self, max_age_s: float) -> Seen | None:
        """The latest read if at most ``max_age_s`` old, else None."""
        seen = self._seen
        if seen is None or self._clock() - seen.at > max_age_s:
            return None
        return seen

    def age_s(self) -> float | None:
        seen = self._seen
        return None if seen is None else max(0.0, self._clock() - seen.at)
