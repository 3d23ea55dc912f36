"""The offloaded-flow count served from memory: one walk per period while
scraped, shared by concurrent scrapes, with its age; walks pause when nobody
scrapes; a scrape never waits for a walk after the first."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

import pytest

from offloadd.core.errors import KernelError
from offloadd.kernel.conntrack import ConntrackTotals, FlowCounts, OffloadCounts
from offloadd.service.flowcount import IDLE_PERIODS, CachedFlowCounter, pause_after
from offloadd.service.lowprio import BACKGROUND_NICE, lower_thread_priority

COUNTS = OffloadCounts(FlowCounts(5, 0), FlowCounts(2, 1))


@dataclass
class SlowWalker:
    walk_s: float = 0.0
    walks: int = 0
    fail: bool = False
    walking: threading.Event = field(default_factory=threading.Event)

    def offloaded(self) -> OffloadCounts:
        self.walks += 1
        self.walking.set()
        time.sleep(self.walk_s)
        self.walking.clear()
        if self.fail:
            raise KernelError(1, "ctnetlink: Operation not permitted")
        return COUNTS

    def totals(self) -> ConntrackTotals:
        return ConntrackTotals(10, 100)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_scrapes_read_the_last_walk_and_its_age() -> None:
    clock, walker = Clock(), SlowWalker()
    c = CachedFlowCounter(walker, 15, clock=clock)
    c.walk()
    clock.now += 4.5
    assert c.offloaded() == COUNTS and c.offloaded() == COUNTS
    assert walker.walks == 1 and c.age_seconds() == 4.5
    assert c.totals() == ConntrackTotals(10, 100)


def test_a_failed_walk_is_the_scrapes_error_until_a_walk_succeeds() -> None:
    walker = SlowWalker(fail=True)
    c = CachedFlowCounter(walker, 15, clock=Clock())
    c.walk()
    with pytest.raises(KernelError, match="not permitted"):
        c.offloaded()
    walker.fail = False
    c.walk()
    assert c.offloaded() == COUNTS


def test_a_scrape_during_a_long_walk_does_not_wait_for_it() -> None:
    walker = SlowWalker()
    c = CachedFlowCounter(walker, 0.05)
    c.walk()  # the first walk
    walker.walk_s = 1.0
    c.start()
    try:
        assert walker.walking.wait(2)
        t0 = time.monotonic()
        got = [c.offloaded() for _ in range(20)]
        took = time.monotonic() - t0
    finally:
        c.close()
    assert got == [COUNTS] * 20
    assert took < 0.5, f"20 scrapes took {took:.2f} s during a 1-s walk"


def test_concurrent_scrapes_share_one_walk() -> None:
    walker = SlowWalker(walk_s=0.2)
    c = CachedFlowCounter(walker, 10)
    c.start()
    try:
        results: list[OffloadCounts] = []
        threads = [threading.Thread(target=lambda: results.append(c.offloaded()))
                   for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
    finally:
        c.close()
    assert results == [COUNTS] * 16 and walker.walks == 1


def test_walks_pause_when_nobody_scrapes_and_a_scrape_wakes_them() -> None:
    walker = SlowWalker()
    period = 0.02
    c = CachedFlowCounter(walker, period, idle_s=period * IDLE_PERIODS)
    c.start()
    try:
        time.sleep(period * (IDLE_PERIODS + 10))
        paused_at = walker.walks
        time.sleep(period * 10)
        assert walker.walks == paused_at <= IDLE_PERIODS + 3  # idle: no more walks
        assert c.offloaded() == COUNTS  # the last count, with its age
        assert (c.age_seconds() or 0) >= period * 5
        deadline = time.monotonic() + 5
        while walker.walks == paused_at and time.monotonic() < deadline:
            time.sleep(0.01)
        assert walker.walks > paused_at  # woken
    finally:
        c.close()


def test_a_scrape_a_minute_keeps_the_walks_going() -> None:
    clock = Clock()
    c = CachedFlowCounter(SlowWalker(), 15, clock=clock)
    clock.now += 299
    assert not c._idle()  # a scrape every 5 minutes still finds fresh counts
    clock.now += 40
    assert c._idle()


def test_the_first_scrape_waits_at_most_a_period_for_the_first_walk() -> None:
    walker = SlowWalker(walk_s=2.0)
    c = CachedFlowCounter(walker, 0.1)
    c.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(KernelError, match="first walk"):
            c.offloaded()
        assert time.monotonic() - t0 < 1.0
    finally:
        c.close()


def test_walks_paced_so_the_count_is_at_most_a_period_old() -> None:
    # A 3-s walk (a million entries under TCG, the side not offloaded dumped)
    # and a 15-s period: the next starts 9 s after it ended and ends 12 s
    # after it: a period even if it takes twice as long.
    assert pause_after(15, 3) == 9
    assert pause_after(15, 0.1) == pytest.approx(14.8)
    # A walk longer than a third of the period: a pause as long as the walk
    # (at most half a CPU), the count then up to two walks old.
    assert pause_after(15, 6) == 6
    assert pause_after(15, 10) == 10
    assert pause_after(15, 40) == 15  # a slowed walk holds the next back a period at most


def test_background_threads_run_at_the_lowest_priority() -> None:
    # The walk's thread (and the executors' workers) lower their own nice
    # value; the calling thread keeps its own.
    got: list[int] = []

    def worker() -> None:
        lower_thread_priority()
        got.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert got == [BACKGROUND_NICE]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before
