"""Watches offloaded flows through stacked devices and refuses a path that swallows them.

Why its own task: the decision is pure (offloadd.core.guard); here are the
looks (a bounded conntrack dump with route lookups, on a worker thread), their
pace, and the hand-over of a refusal to the daemon, which reconciles (the
refused device is attached as it is) and has its flowtable replaced (the
flows the old path holds are freed and offloaded again, or kept on the slow
path where the kernel will not offload the device itself).

It looks only while some selected device is attached through the devices
beneath it (stack = lower/both); a refusal holds until a reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Protocol

from offloadd.core.errors import OffloaddError
from offloadd.core.guard import GuardPolicy, GuardState, Look, evidence, judge
from offloadd.service.lowprio import lower_thread_priority
from offloadd.service.status import GuardCounts, Status

log = logging.getLogger("offloadd")


class FlowSampleSource(Protocol):
    """Run on one worker thread, always the same (it may keep sockets)."""

    def sample(self) -> Look: ...


class StackGuard:
    def __init__(self, source: FlowSampleSource, status: Status,
                 on_refused: Callable[[Mapping[str, str]], None], *, interval_s: float,
                 policy: GuardPolicy | None = None,
                 step: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext
                 ) -> None:
        self._source = source
        self._step = step  # marks each look (a conntrack dump): see Supervisor
        self._status = status
        self._on_refused = on_refused
        self._interval_s = interval_s
        self._policy = policy or GuardPolicy()
        self.counts = GuardCounts()
        self.state = GuardState()
        self._prev: Look | None = None
        self._failed = False
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="offloadd-guard",
                                        initializer=lower_thread_priority)

    def configure(self, interval_s: float, policy: GuardPolicy) -> None:
        """A (reloaded) config's pace and thresholds; the next look uses them."""
        self._interval_s = interval_s
        self._policy = policy

    def clear(self) -> None:
        """A reload: every device is judged afresh."""
        self.state = GuardState()
        self._prev = None
        self.counts.refused = {}

    def watched(self) -> frozenset[str]:
        """The selected devices attached through devices beneath them now."""
        desired = self._status.desired
        if desired is None:
            return frozenset()
        return frozenset(r.device for _sel, r in desired.stacks
                         if r.stacked and r.device not in self.state.refused)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.look()

    async def look(self) -> None:
        watched = self.watched()
        self.counts.watched = tuple(sorted(watched))
        if not watched:
            self._prev = None
            return
        try:
            with self._step():
                look = await asyncio.get_running_loop().run_in_executor(self._worker,
                                                                        self._source.sample)
        except OffloaddError as e:
            # A look that failed judges nothing and breaks the looks in a
            # row: the next starts afresh.
            if not self._failed:
                log.warning("stack guard: cannot look at offloaded flows: %s", e,
                            extra={"OPERATION": "guard"})
            self._failed = True
            self._prev = None
            self.state = GuardState(refused=self.state.refused)
            return
        self._failed = False
        prev, self._prev = self._prev, look
        self.counts.looks_total += 1
        if prev is None:
            return
        found = evidence(prev, look, watched, self._policy)
        self.state, new = judge(self.state, found, self._policy)
        for dev, n in self.state.suspect.items():
            log.info("stack guard: %s suspect (%d look(s)): %s", dev, n, found[dev],
                     extra={"DEVICE": dev, "OPERATION": "guard"})
        if not new:
            return
        self.counts.refused = dict(self.state.refused)
        self.counts.refusals_total += len(new)
        self.counts.last_refusal_time = time.time()
        for dev, why in new.items():
            log.warning("stack guard: %s", why, extra={"DEVICE": dev, "OPERATION": "guard"})
        self._on_refused(new)
