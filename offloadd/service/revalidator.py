"""Re-validates offloaded flows after others' ruleset changes (on the loop).

Why its own unit: the Daemon only hands it the triggers it read from the
nf_tables change stream; the coalescing (offloadd.core.revalidate), the
one-batch replacement of offloadd's flowtables with its read-back, and what
is reported about it live here, with their own tests.

The replacement is the kernel's only way to send an offloaded flow back
through the forward chains while keeping its conntrack entry (ctnetlink
cannot clear the offload bit; deleting the entry would drop its NAT mapping).
On kernels that can leave flows behind after it (7.3), the Repairer is told,
so its checks follow as after one of its own replacements.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from offloadd.core.errors import OffloaddError
from offloadd.core.plan import replace_flowtables_plan
from offloadd.core.revalidate import RevalidatePolicy, Schedule
from offloadd.service.status import RevalidateCounts, Status
from offloadd.service.timing import Timing
from offloadd.service.writer import TableWriter

log = logging.getLogger("offloadd")


class Revalidator:
    def __init__(self, writer: TableWriter, status: Status, *,
                 enabled: Callable[[], bool] = lambda: True,
                 replaced: Callable[[tuple[str, ...]], None] = lambda _names: None,
                 policy: RevalidatePolicy | None = None,
                 timing: Timing = Timing(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._writer = writer
        # Its own counters (the daemon hands them to status and metrics).
        self.counts = RevalidateCounts()
        self._waiting = False  # for a reconcile, since the pending changes came
        self._status = status
        self._enabled = enabled
        self._replaced = replaced
        self._policy = policy or RevalidatePolicy()
        self._clock = clock
        self._timing = timing
        self._schedule = Schedule()
        self._retry_at: float | None = None
        self._kick = asyncio.Event()
        # The writer's transaction count when the latest change came (the
        # loop runs both, so it orders them).
        self._change_tx = 0

    def changed(self, trigger: str) -> None:
        """Someone else committed a change that may change what the policy allows."""
        self.counts.policy_changes_total += 1
        if not self._enabled():
            return
        self._change_tx = self._writer.counts.transactions_total
        self._schedule = self._schedule.changed(self._clock(), trigger)
        self._kick.set()

    def skipped(self) -> None:
        """Someone else committed a change no forwarded packet can meet."""
        self.counts.policy_changes_skipped_total += 1

    def due_at(self) -> float | None:
        due = self._schedule.due_at(self._policy)
        if due is not None and self._retry_at is not None:
            due = max(due, self._retry_at)
        return due

    async def run(self) -> None:
        while True:
            due = self.due_at()
            now = self._clock()
            # Within a microsecond is due: a deadline summed from floats can
            # sit 1e-17 s past the clock's own sum, and waiting that out
            # spins (forever on a virtual clock that does not move for it).
            if due is None or due > now + 1e-6:
                self._kick.clear()
                timeout = None if due is None else due - now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), timeout)
                continue
            try:
                self.revalidate()
            except Exception:
                # The top of this task's loop: one failed pass must not end
                # re-validation for good (nothing else would restart it).
                log.exception("re-validation failed")
                self._retry_at = self._clock() + self._timing.revalidate_failed_retry_s

    def revalidate(self) -> bool:
        """Replaces offloadd's flowtables if changes are pending; True if it did."""
        pending = self._schedule.pending
        if pending is None:
            return False
        self._retry_at = None
        if not self._enabled():
            self._schedule = Schedule(None, self._schedule.last_run_at)
            return False
        desired = self._status.desired
        table = desired.table if desired is not None else None
        if table is None or not table.flowtables:
            # No flowtable, no offloaded flow: nothing to tear down.
            self._schedule = self._schedule.ran(self._clock(), self._policy)
            return False
        have = self._writer.read()
        if have is None or have != table:
            # A reconcile is due (the admin's change may move offloadd's chain):
            # replace from the state it will write, just after it. Asked for,
            # not waited on: nothing else may wake it.
            if not self._waiting:
                self._waiting = True
                self.counts.waited_total += 1
                log.info("re-validation waits for a reconcile: offloadd's table is not in "
                         "its desired state", extra={"OPERATION": "revalidate-wait"})
            self._writer.request_reconcile("a re-validation waits for offloadd's table to "
                                           "be in its desired state")
            self._retry_at = self._clock() + self._timing.revalidate_not_in_sync_retry_s
            return False
        self._waiting = False
        created = self._writer.table_created_tx
        if created is not None and created > self._change_tx:
            # The table (flowtables and gate) was created after every pending
            # change, as after `flush ruleset`: each flow in it passed the
            # chains as they are now. Replacing it would only send them all
            # through the slow path once more.
            self._schedule = Schedule(None, self._schedule.last_run_at, self._schedule.burst_runs)
            self.counts.moot_total += 1
            log.info("re-validation after %s not needed: offloadd's table was created after "
                     "it, so every flow in it passed the current policy",
                     "; ".join(pending.triggers), extra={"OPERATION": "revalidate-moot"})
            return False
        names = tuple(ft.name for ft in table.flowtables)
        t0 = self._clock()
        try:
            # From the table as read: a gate set larger than desired (an
            # operator's) comes back as large.
            self._writer.write(replace_flowtables_plan(have, names, forget_passed=True,
                                                       gate_size=table.passed_size),
                               table, "the re-validation of flowtable(s) " + ", ".join(names))
        except OffloaddError as e:
            log.error("re-validation failed (flowtable(s) %s): %s; retrying in %.0f s",
                      ", ".join(names), e, self._timing.revalidate_failed_retry_s)
            self._status.record_error(f"re-validation failed: {e}")
            self._retry_at = self._clock() + self._timing.revalidate_failed_retry_s
            return False
        done = self._clock()
        self._schedule = self._schedule.ran(done, self._policy)
        self.counts.revalidations_total += 1
        trigger = "; ".join(pending.triggers)
        if pending.count > len(pending.triggers):
            trigger += f" (and {pending.count - len(pending.triggers)} more change(s))"
        self.counts.last = {
            "time": time.time(), "trigger": trigger, "flowtables": list(names),
            "changes": pending.count, "delay_seconds": round(done - pending.first_at, 3),
            "duration_seconds": round(done - t0, 3)}
        log.info("re-validated offloaded flows after %s: flowtable(s) %s replaced, each flow "
                 "meets the current policy at its next packet (%.0f ms after the change, "
                 "replacement %.0f ms)", trigger, ", ".join(names),
                 (done - pending.first_at) * 1000, (done - t0) * 1000,
                 extra={"OPERATION": "revalidate", "FLOWTABLE": ",".join(names)})
        self._replaced(names)
        return True
