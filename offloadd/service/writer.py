"""The one writer of offloadd's table: apply → read back → verify, counted once.

Why: the reconcile pass, the repair and the re-validation all change the same
table. Each used to apply, read back and count on its own, and a failed repair
or re-validation step left the table as it was until some unrelated event
woke a reconcile. Every write now goes through this one object (owned by the
daemon, used on its loop, so writes are serialised): it counts transactions
and failures in one place, and a write that fails or does not verify asks the
daemon for a reconcile, which brings the table back from the desired state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from offloadd.core.errors import OffloaddError, VerifyError
from offloadd.core.model import TableState
from offloadd.core.plan import CreateTable, Plan

log = logging.getLogger("offloadd")


class TableBackend(Protocol):
    def read(self) -> TableState | None: ...

    def apply(self, plan: Plan) -> str: ...


@dataclass
class WriteCounts:
    """The writer's counters (status and metrics read them)."""

    transactions_total: int = 0
    failures_total: int = 0  # writes that failed or did not verify
    reconciles_requested_total: int = 0  # by a failed write or a planner out of sync


def describe_diff(desired: TableState, current: TableState | None) -> str:
    """A one-line desired-vs-current summary for the log on verify mismatch."""
    if current is None:
        return "table is missing"
    parts = []
    for ft in desired.flowtables:
        have = current.flowtable(ft.name)
        if have != ft:
            parts.append(f"flowtable {ft.name}: want {ft} have {have}")
    for st in desired.sets:
        have_set = current.set(st.name)
        if have_set != st:
            parts.append(f"set {st.name}: want {sorted(st.elements)} have "
                         f"{sorted(have_set.elements) if have_set else None}")
    if desired.chain != current.chain:
        parts.append(f"chain: want {desired.chain} have {current.chain}")
    return "; ".join(parts) or "differs outside flowtables/sets/chain"


class TableWriter:
    """Serialises and counts every write of offloadd's table.

    ``request_reconcile(why, out_of_sync)`` is the daemon's: it wakes a reconcile
    pass. The reconcile pass itself writes with ``reconcile_on_failure=False``
    (the loop retries it with its own backoff).
    """

    def __init__(self, backend: TableBackend,
                 request_reconcile: Callable[[str, bool], None] = lambda _why, _found: None,
                 counts: WriteCounts | None = None) -> None:
        self._backend = backend
        self._request_reconcile = request_reconcile
        self.counts = counts if counts is not None else WriteCounts()
        # The transaction (its number in counts) that last created the table:
        # everything in it, gate included, is younger than any change seen
        # before it (the re-validator skips what that makes moot).
        self.table_created_tx: int | None = None

    def read(self) -> TableState | None:
        return self._backend.read()

    def apply(self, plan: Plan, what: str, *, reconcile_on_failure: bool = True) -> str:
        """One transaction (nothing for an empty plan); the script it ran."""
        if plan.is_empty:
            return ""
        try:
            script = self._backend.apply(plan)
        except OffloaddError as e:
            self._failed(what, e, reconcile_on_failure)
            raise
        self.counts.transactions_total += 1
        if any(isinstance(op, CreateTable) for op in plan.ops):
            self.table_created_tx = self.counts.transactions_total
        return script

    def verify(self, desired: TableState, what: str, *,
               reconcile_on_failure: bool = True) -> TableState:
        """Reads the table back; VerifyError unless it is ``desired``.

        Returns the table as read: equal to ``desired``, with what equality
        leaves out (the gate's set sizes, which may be larger)."""
        try:
            after = self._backend.read()
            if after is None or after != desired:
                raise VerifyError(f"kernel state differs after {what}: "
                                  + describe_diff(desired, after))
        except OffloaddError as e:
            self._failed(what, e, reconcile_on_failure)
            raise
        return after

    def write(self, plan: Plan, desired: TableState, what: str) -> None:
        """apply → read back → verify, as one step."""
        self.apply(plan, what)
        self.verify(desired, what)

    def request_reconcile(self, why: str, *, out_of_sync: bool = True) -> None:
        """A planner found the table out of its desired state (``out_of_sync``:
        the daemon may count that as drift), or a write of its failed: a
        reconcile first."""
        self.counts.reconciles_requested_total += 1
        self._request_reconcile(why, out_of_sync)

    def _failed(self, what: str, e: OffloaddError, reconcile: bool) -> None:
        self.counts.failures_total += 1
        if reconcile:
            # Its own half-done step, not a change no event announced.
            self.request_reconcile(f"{what} failed: {e}", out_of_sync=False)
