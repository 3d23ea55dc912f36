"""The offloaded-flow count, walked in the background and served from memory.

Why: counting offloaded flows walks the kernel's conntrack table (1M
offloaded flows: 7.1 s under the lab's TCG; Prometheus' default scrape
timeout is 10 s), and every scraper did its own walk. Here one thread walks
every ``period_s`` while someone scrapes, a scrape only reads the last result
and its age (``offloadd_offloaded_flows_age_seconds``), and concurrent scrapes
share it. With no scrape for a few periods the walks pause (a gateway nobody
scrapes pays nothing; any scrape interval up to 5 minutes keeps them going);
the next scrape gets the last count with its age and wakes them. Only the
first scrape waits, for the first walk, at most a period. Walks are paced
(``pause_after``) so that the count a scrape gets is at most a period old,
unless a walk takes more than half the period.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from offloadd.core.errors import KernelError
from offloadd.kernel.conntrack import ConntrackTotals, OffloadCounts
from offloadd.service.lowprio import lower_thread_priority
from offloadd.service.timing import Timing

log = logging.getLogger("offloadd")

# Walks pause when no scrape came for this many periods, and at least
# Timing.flowcount_idle_min_s (see there).
IDLE_PERIODS = 4


def pause_after(period_s: float, walk_s: float) -> float:
    """Seconds from the end of a walk to the start of the next. The age counts
    from a walk's end, so the next walk must end before the count is a period
    old: it starts a period minus *two* walks after the last one ended, which
    keeps that promise when the next walk takes up to twice as long (a busy
    machine). A walk longer than a third of the period (millions of entries
    under emulation, counted directly) is followed by a pause as long as
    itself, at most a period: the walks take at most about half a CPU, and one
    walk slowed by a busy machine (330 s beside `conntrack -L` at 1M flows)
    does not hold the next one back as long (the count was 355 s old)."""
    return max(period_s - 2 * walk_s, min(walk_s, period_s))


class Walker(Protocol):
    def offloaded(self) -> OffloadCounts: ...

    def totals(self) -> ConntrackTotals: ...


class CachedFlowCounter:
    """A metrics FlowCounter over ``walker``, answered from the last walk."""

    def __init__(self, walker: Walker, period_s: float,
                 clock: Callable[[], float] = time.monotonic,
                 idle_s: float | None = None, timing: Timing = Timing()) -> None:
        self._walker = walker
        self._period = period_s
        self._idle_s = (idle_s if idle_s is not None
                        else max(IDLE_PERIODS * period_s, timing.flowcount_idle_min_s))
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: OffloadCounts | None = None
        self._error: Exception | None = None
        self._done_at: float | None = None  # when the last walk ended
        self._walk_s = 0.0
        self._asked_at = clock()  # the last scrape (start counts as one)
        self._first = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.walks_total = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="offloadd-flowcount",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def walk(self) -> None:
        """One walk; its result (or its error) replaces the last."""
        t0 = self._clock()
        try:
            counts, error = self._walker.offloaded(), None
        except Exception as e:
            # Reported by the next scrape (its source "conntrack" down), not here.
            counts, error = None, e
        done = self._clock()
        with self._lock:
            self._counts, self._error = counts, error
            self._done_at, self._walk_s = done, done - t0
            self.walks_total += 1
        self._first.set()

    def _idle(self) -> bool:
        return self._clock() - self._asked_at > self._idle_s

    def _run(self) -> None:
        lower_thread_priority()  # a scrape must not wait behind a walk
        while not self._stop.is_set():
            if self._idle():
                self._wake.wait()
                self._wake.clear()
                continue
            self.walk()
            self._stop.wait(pause_after(self._period, self.walk_seconds()))

    # -- the FlowCounter side (the scrape thread) ----------------------------------
    def offloaded(self) -> OffloadCounts:
        was_idle = self._idle()
        self._asked_at = self._clock()
        if was_idle:
            self._wake.set()
        self._first.wait(self._period)
        with self._lock:
            counts, error = self._counts, self._error
        if error is not None:
            raise error
        if counts is None:
            raise KernelError(0, "the first walk of the conntrack table has not ended yet")
        return counts

    def age_seconds(self) -> float | None:
        """How old the count is (None before the first walk)."""
        with self._lock:
            done = self._done_at
        return None if done is None else max(0.0, self._clock() - done)

    def walk_seconds(self) -> float:
        with self._lock:
            return self._walk_s

    def totals(self) -> ConntrackTotals:
        # Two /proc reads: cheap, always current.
        return self._walker.totals()
