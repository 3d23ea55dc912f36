"""Counts the gate's elements now and then, so that status and metrics say how full it is.

Why: a full gate set fails closed and says nothing (new flows stay on the
slow path), and offloadd never lists the sets (libnftables would decode and
print every element). So every Timing.gate_count_interval_s both sets are
counted with a raw set-element dump (the Backend's count_elements,
offloadd.kernel.setcount) on a worker thread — a million elements take about
a second — and the result is kept in Status.gate_fill, which status and the
metrics scrape read: no kernel read at scrape time.

The kernel walks a set's hash from its start again for every datagram of a
dump and skips what it sent, so a count costs it time that grows with the
square of the elements (2 x 200k: 12 s of the lab VM's CPU on 6.12, 25 s on
7.3.4; 2 x 1M: minutes). Two bounds keep that from the router's other work:
- while a count runs, it waits after each datagram for (1/share - 1) times
  the CPU the kernel's walk for it took (Timing.gate_count_cpu_share), so it
  never takes more than that share of a CPU, even as the first count after a
  restart on a full gate; nice 10 alone did not do it (the walk is kernel
  code: attaches during an unpaced count took 3x as long);
- the next count waits at least 1/Timing.gate_count_max_duty times the CPU
  the last one took, so counting takes no more than that share on average.
A stopping daemon ends a count at its next wait.

Only while offloadd's table has the gate (Status.gate_size, as the last pass
left it). A count that fails keeps the last elements, marked stale with why;
it is logged once, not every period, and the next count that succeeds says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Protocol

from offloadd.core.errors import KernelError, OffloaddError
from offloadd.core.gate import PASSED_SETS, GateFill
from offloadd.service.lowprio import lower_thread_priority
from offloadd.service.status import Status
from offloadd.service.timing import Timing

log = logging.getLogger("offloadd")


class GateSetMissingError(KernelError):
    """A gate set the last pass left is not in the kernel's table now."""


class GateCountStoppedError(OffloaddError):
    """offloadd is stopping: the count in progress ends at its next wait."""


class ElementCounter(Protocol):
    """Run on one worker thread, always the same (the Backend's)."""

    def count_elements(self, name: str,
                       after_datagram: Callable[[float], None] | None = None) -> int | None: ...


def count_gate(source: ElementCounter,
               after_datagram: Callable[[float], None] | None = None) -> dict[str, int]:
    """Each gate set's elements now; raises OffloaddError if one cannot be
    counted or is missing (a blocking kernel read: not on the event loop)."""
    out = {}
    for name in PASSED_SETS:
        n = source.count_elements(name, after_datagram)
        if n is None:
            raise GateSetMissingError(f"gate set {name} is not in offloadd's table")
        out[name] = n
    return out


def count_now(source: ElementCounter, wall: Callable[[], float] = time.time) -> GateFill:
    """The gate's fill counted at once, a failure included as a stale fill
    (offloadctl status while the daemon is down)."""
    try:
        return GateFill(count_gate(source), wall())
    except OffloaddError as e:
        return GateFill(error=str(e))


class GateCounter:
    def __init__(self, source: ElementCounter, status: Status, *,
                 timing: Timing = Timing(), wall: Callable[[], float] = time.time,
                 step: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
                 cpu: Callable[[], float] = time.thread_time,
                 progress: Callable[[], None] = lambda: None) -> None:
        self._source = source
        self._progress = progress  # each datagram: the step is not stalled (Supervisor)
        self._cpu = cpu  # the worker thread's CPU, the kernel's walk included
        self._step = step  # marks each count (a kernel dump): see Supervisor
        self._status = status
        self._timing = timing
        self._wall = wall
        self._failing = False
        self._stopping = threading.Event()
        self.counts_total = 0
        self.last_cost_s = 0.0  # CPU seconds (the duty counts these)
        self.last_wall_s = 0.0  # ... and how long it took, its waits included
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="offloadd-gate",
                                        initializer=lower_thread_priority)

    async def run(self) -> None:
        try:
            while True:
                await self.count()
                await asyncio.sleep(next_delay(self._timing, self.last_cost_s)
                                    if self._status.gate_size
                                    else self._timing.gate_count_until_gate_s)
        except asyncio.CancelledError:
            # A paced count on the worker may have minutes to go: end it.
            self._stopping.set()
            raise

    async def count(self) -> None:
        """One count of both sets, kept in the daemon's status."""
        if not self._status.gate_size:
            # No gate (not yet, or not any more): there is no fill to tell.
            self._status.gate.fill = None
            return
        try:
            with self._step():
                elements = await asyncio.get_running_loop().run_in_executor(
                    self._worker, self._count_sets)
        except OffloaddError as e:
            self._failed(str(e))
            return
        if self._failing:
            log.info("gate count: counted again (%s)", _held(elements),
                     extra={"OPERATION": "gate"})
        self._failing = False
        self.counts_total += 1
        self._status.gate.fill = GateFill(elements, self._wall(),
                                          duration_s=self.last_wall_s)

    def _count_sets(self) -> dict[str, int]:
        """On the worker thread; its CPU is the count's cost (the kernel's
        walk), its real duration what status shows, whatever the event
        loop's clock says."""
        t0, c0 = time.monotonic(), self._cpu()
        try:
            return count_gate(self._source, self._pause)
        finally:
            self.last_cost_s = self._cpu() - c0
            self.last_wall_s = time.monotonic() - t0

    def _pause(self, walked_cpu_s: float) -> None:
        """After each datagram, on the worker thread."""
        self._progress()
        share = self._timing.gate_count_cpu_share
        if self._stopping.wait(walked_cpu_s * (1.0 / share - 1.0)):
            raise GateCountStoppedError("offloadd is stopping")

    def _failed(self, why: str) -> None:
        # Once, not every period: a lasting cause (no CAP_NET_ADMIN) would
        # otherwise repeat every minute. Status shows it meanwhile.
        if not self._failing:
            log.warning("gate count: cannot count the gate's elements: %s (the last count "
                        "is kept, marked stale)", why, extra={"OPERATION": "gate"})
        self._failing = True
        fill = self._status.gate_fill or GateFill()
        self._status.gate.fill = fill.failed(why)


def next_delay(timing: Timing, last_cost_s: float) -> float:
    """Seconds to the next count: the interval, or longer when the last count
    took more CPU (``last_cost_s``) than gate_count_max_duty of it (a large gate)."""
    return max(timing.gate_count_interval_s, last_cost_s / timing.gate_count_max_duty)


def _held(elements: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in elements.items())
