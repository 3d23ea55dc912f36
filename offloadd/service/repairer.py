"""Checks for flows the kernel left behind and replaces their flowtable (on the loop).

Why its own unit: the Daemon only tells it that links went away; when to
look, what a scan found, the decision (offloadd.core.repair) and the one-batch
replacement with its read-back live here, with their own tests.

When it looks: a route cache flush is what leaves flows behind, and link
events are the flushes offloadd sees (a device gone, up or down, a carrier,
MTU or address change: offloadd.kernel.linkmsg), so a check follows each
(after the flows' next packets: by default 1 s and 3 s later). Flushes it
cannot see (an admin's ``net.ipv4.route.flush``, routing daemons) are caught
by a periodic check (Timing.repair_periodic_s, 30 s) — only on a kernel that
has been seen leaving flows behind (a check after a flush found some): a
kernel without the regression (all but 7.3 in the lab) never pays a periodic
walk of its conntrack table. Which kernel leaves flows behind cannot be
probed from the unit (a scratch namespace needs CAP_SYS_ADMIN), so it is
learnt, and shown by offloadctl status. A check is one filtered conntrack
dump in a worker thread; the loop only decides and applies.

What a check costs grows with the conntrack table (the kernel walks every
entry to filter it: at a million entries, seconds of one CPU under the lab's
TCG, during which a one-CPU box answers nothing else). So until the kernel is
seen leaving flows behind, the checks that follow flushes are kept to
Timing.repair_flush_scan_share of a CPU: the next waits for the last
scan's CPU seconds times (1 - share) / share after it, and every flush in
between is answered by that one check. A small table's scan takes
milliseconds and is never held back; a big one on a box whose links churn
is no longer walked twice per event. On a kernel that does leave flows
behind (7.3) a check follows every flush as asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Protocol

from offloadd.core.errors import OffloaddError
from offloadd.core.model import TableState
from offloadd.core.plan import compute_plan, release_flowtables_plan
from offloadd.core.repair import (
    FlowtableRecord,
    RepairPolicy,
    Scan,
    decide,
    left_behind,
    pending_second_look,
)
from offloadd.service.lowprio import lower_thread_priority
from offloadd.service.status import RepairCounts, Status
from offloadd.service.timing import Timing
from offloadd.service.writer import TableWriter

log = logging.getLogger("offloadd")


class LeftBehindSource(Protocol):
    """Run on one worker thread, always the same (it may keep sockets)."""

    def scan(self, flowtable_of: Mapping[str, str]) -> Scan: ...


class Repairer:
    def __init__(self, writer: TableWriter, source: LeftBehindSource, status: Status, *,
                 policy: RepairPolicy | None = None,
                 enabled: Callable[[], bool] = lambda: True,
                 timing: Timing = Timing(),
                 clock: Callable[[], float] = time.monotonic,
                 scan_cpu_clock: Callable[[], float] = time.thread_time,
                 step: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext
                 ) -> None:
        self._enabled = enabled
        # Marks each scan (a kernel dump on the worker): one that never
        # returns shows the task stalled (Supervisor).
        self._step = step
        self._writer = writer
        # Its own counters (the daemon hands them to status and metrics).
        self.counts = RepairCounts()
        self._source = source
        self._status = status
        self._policy = policy or RepairPolicy()
        self._timing = timing
        # The event loop's clock: the due times are waited for on it.
        self._clock = clock
        # The worker thread's CPU clock (the kernel's walk for the scan
        # included): a scan's cost, which the budget of checks after flushes
        # is kept from (wall time would also count the waits of a busy box).
        self._scan_cpu_clock = scan_cpu_clock
        self._records: Mapping[str, FlowtableRecord] = {}
        self._previous: Scan | None = None
        self._due: list[float] = []  # when the checks asked for are due (on _clock)
        # Checks after route cache flushes: held to the scan budget until the
        # kernel is seen leaving flows behind (then due like the others).
        self._flush_due: list[float] = []
        self._flush_checks_from = 0.0  # the budget's earliest next one (on _clock)
        self._kick = asyncio.Event()
        self._scan_failed = False
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="offloadd-scan",
                                        initializer=lower_thread_priority)
        # Flowtables another component needs replaced (flowtable -> why).
        self._forced: dict[str, str] = {}

    def replace_soon(self, names: Iterable[str], why: str) -> None:
        """Another component (the stack guard) needs the flows these flowtables
        hold freed: they are replaced at the next check, whatever ``repair``
        says (it is about flows the kernel leaves behind)."""
        for name in names:
            self._forced[name] = why
        self.check_in(0.0)

    def route_cache_flushed(self) -> None:
        now = self._clock()
        asked = [now + delay for delay in self._timing.repair_after_flush_s]
        if not asked:
            return
        if not self._known_to_leave_behind() and asked[0] < self._flush_checks_from:
            self.counts.flush_checks_deferred_total += 1
            log.debug("route cache flushed: checked in %.1f s (the scan budget)",
                      self._flush_checks_from - now)
        else:
            log.debug("route cache flushed: checks in %s s",
                      ", ".join(f"{d:g}" for d in self._timing.repair_after_flush_s))
        self._flush_due += asked
        self._kick.set()

    def _known_to_leave_behind(self) -> bool:
        return self.counts.leaves_behind_since is not None

    def _flush_wake(self) -> float | None:
        if not self._flush_due:
            return None
        first = min(self._flush_due)
        if self._known_to_leave_behind():
            return first
        return max(first, self._flush_checks_from)

    def flowtables_replaced(self, _names: tuple[str, ...] = ()) -> None:
        """Someone else (the re-validation) replaced flowtables: look as after a repair."""
        for delay in (self._policy.settle_s, *self._timing.repair_after_repair_s):
            self.check_in(delay)

    def check_in(self, delay: float) -> None:
        self._due.append(self._clock() + delay)
        self._kick.set()

    async def run(self) -> None:
        periodic_s = self._timing.repair_periodic_s
        next_periodic: float | None = None
        while True:
            now = self._clock()
            if next_periodic is None and self.counts.leaves_behind_since is not None:
                next_periodic = now + periodic_s
            flush_wake = self._flush_wake()
            wake = min([*([next_periodic] if next_periodic is not None else []), *self._due,
                        *([flush_wake] if flush_wake is not None else [])], default=None)
            # Within a microsecond is due (a float sum can sit 1e-17 s past
            # the clock's: waiting that out spins).
            if wake is None or wake > now + 1e-6:
                self._kick.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(),
                                           None if wake is None else wake - now)
                continue
            # Whatever woke it, this check answers every request due by now.
            self._due = [t for t in self._due if t > now + 1e-6]
            self._flush_due = [t for t in self._flush_due if t > now + 1e-6]
            if next_periodic is not None and next_periodic <= now + 1e-6:
                next_periodic = now + periodic_s
            try:
                await self.check()
            except Exception:
                # The top of this task's loop: a bug in one check must not
                # end the checks for good (nothing else would restart them).
                log.exception("check for flows left behind failed")

    async def check(self) -> None:
        """One scan, the decision, and the repairs it calls for."""
        desired = self._status.desired
        if desired is None:
            return
        if self._forced:
            await self._replace_forced(desired.table, desired.flowtable_of())
        if not self._enabled():
            return
        flowtable_of = desired.flowtable_of()
        t0 = self._clock()
        try:
            with self._step():
                scan, wall_s, cpu_s = await asyncio.get_running_loop().run_in_executor(
                    self._worker, self._timed_scan, flowtable_of)
        except OffloaddError as e:
            if not self._scan_failed:
                log.error("cannot check for flows left behind: %s", e)
            self._scan_failed = True
            return
        self._scan_failed = False
        self.counts.checks_total += 1
        self.counts.last_scan_s = wall_s
        self.counts.last_scan_cpu_s = cpu_s
        share = self._timing.repair_flush_scan_share
        self._flush_checks_from = self._clock() + cpu_s * (1 - share) / share
        log.debug("checked for flows left behind: %d held without the offload mark, scan "
                  "%.3f s (%.3f s CPU)", len(scan.held), wall_s, cpu_s)
        previous, self._previous = self._previous, scan
        found = left_behind(scan, previous, self._policy.stale_gap_s)
        flows = sum(len(ids) for ids in found.values())
        self.counts.left_behind_flows = flows
        if flows and self.counts.leaves_behind_since is None:
            self.counts.leaves_behind_since = time.time()
            log.warning("this kernel leaves flows behind (%d found): from now on a check "
                        "every %.0f s too, for route cache flushes no event announces",
                        flows, self._timing.repair_periodic_s, extra={"OPERATION": "repair"})
        if flows and self._writer.read() != desired.table:
            # A reconcile is due (the table is not what it should be): the
            # replacement must start from the desired state, so ask for it
            # and look again after it.
            self._writer.request_reconcile("a repair waits for offloadd's table to be in "
                                           "its desired state")
            self.check_in(self._timing.repair_not_in_sync_retry_s)
            return
        if pending_second_look(scan, previous, found, self._policy.stale_gap_s):
            # Held but not judged yet: a second look tells a flow the flowtable
            # keeps forwarding from one its garbage collection is about to free.
            self.check_in(self._policy.stale_gap_s)
        decision = decide(self._records, scan.at, found, self._policy)
        self._records = decision.records
        for held in decision.ineffective:
            log.warning("flowtable %s: %s", held.flowtable, held.reason,
                        extra={"FLOWTABLE": held.flowtable, "OPERATION": "repair-held"})
        self.counts.held = "; ".join(f"{h.flowtable}: {h.reason}"
                                             for h in (*decision.ineffective, *decision.held))
        if decision.repair:
            await self._repair(desired.table, decision.repair, found, scan.at - t0,
                               flowtable_of)
        if decision.recheck_in is not None:
            self.check_in(decision.recheck_in)

    def _timed_scan(self, flowtable_of: Mapping[str, str]) -> tuple[Scan, float, float]:
        """On the worker: a scan, its wall and CPU seconds (the thread's,
        the kernel's walk for it included)."""
        wall0, cpu0 = time.monotonic(), self._scan_cpu_clock()
        scan = self._source.scan(flowtable_of)
        return scan, time.monotonic() - wall0, self._scan_cpu_clock() - cpu0

    async def _replace_forced(self, table: TableState, flowtable_of: Mapping[str, str]) -> None:
        if self._writer.read() != table:
            self._writer.request_reconcile("a flowtable replacement waits for offloadd's table "
                                           "to be in its desired state")
            self.check_in(self._timing.repair_not_in_sync_retry_s)
            return
        forced, self._forced = self._forced, {}
        names = tuple(sorted(n for n in forced if table.flowtable(n) is not None))
        if names:
            await self._repair(table, names, {}, 0.0, flowtable_of, why=forced)

    async def _repair(self, table: TableState, names: tuple[str, ...],
                      found: Mapping[str, frozenset[int]], scan_s: float,
                      flowtable_of: Mapping[str, str], *,
                      why: Mapping[str, str] | None = None) -> None:
        """Replaces the flowtables in two transactions: replace them with their
        offload rules held back, wait until the kernel released the entries the
        old ones held, put the rules back (see release_flowtables_plan)."""
        t1 = self._clock()
        ids = frozenset(i for n in names for i in found.get(n, ()))
        what = "the repair of flowtable(s) " + ", ".join(names)
        try:
            # A failed step asks the writer's owner for a reconcile: after the
            # first, the chain lacks these flowtables' offload rules.
            self._writer.apply(release_flowtables_plan(table, names), what)
            released = await self._released(ids, flowtable_of)
            # From what is there now: a reconcile may have run meanwhile.
            self._writer.write(compute_plan(table, self._writer.read()), table, what)
        except OffloaddError as e:
            log.error("repair of flowtable(s) %s failed: %s", ", ".join(names), e)
            self._status.record_error(f"repair failed: {e}")
            self.check_in(self._policy.min_interval_s)
            return
        # On 7.3 a busy flow can lose the mark again a moment after the
        # replacement (its next packet, while the old entry is torn down):
        # look again after the settle check too, not only at the next period.
        for delay in self._timing.repair_after_repair_s:
            self.check_in(delay)
        self.counts.repairs_total += len(names)
        flows = {n: len(found.get(n, ())) for n in names}
        if why is not None:
            self.counts.last = {"time": time.time(), "flowtables": list(names), "flows": flows,
                                "reason": "; ".join(dict.fromkeys(why[n] for n in names))}
            for name in names:
                log.warning("flowtable %s: replaced to free its flows (%s); "
                            "each is offloaded again at its next packet (replacement %.0f ms)",
                            name, why[name], (self._clock() - t1) * 1000,
                            extra={"FLOWTABLE": name, "OPERATION": "repair"})
            return
        self.counts.last = {
            "time": time.time(), "flowtables": list(names), "flows": flows,
            "reason": "conntrack entries left behind by the kernel (held by the flowtable, "
                      "not marked offloaded)"}
        for name in names:
            log.warning("flowtable %s: replaced to free %d flow(s) the kernel left behind "
                        "(forwarded by the flowtable but not marked offloaded in conntrack); "
                        "each is offloaded again at its next packet (scan %.0f ms, "
                        "replacement %.0f ms, entries %s)", name, flows[name], scan_s * 1000,
                        (self._clock() - t1) * 1000,
                        "released" if released else "not all released before re-creating",
                        extra={"FLOWTABLE": name, "OPERATION": "repair"})

    async def _released(self, ids: frozenset[int], flowtable_of: Mapping[str, str]) -> bool:
        """Waits until none of ``ids`` is held any more (True), at most
        Timing.repair_release_max_s."""
        deadline = self._clock() + self._timing.repair_release_max_s
        loop = asyncio.get_running_loop()
        while self._clock() < deadline:
            await asyncio.sleep(self._timing.repair_release_poll_s)
            try:
                with self._step():
                    scan = await loop.run_in_executor(self._worker, self._source.scan,
                                                      flowtable_of)
            except OffloaddError:
                return False
            if not ids & scan.held.keys():
                return True
        return False
