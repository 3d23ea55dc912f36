"""Which tables' changes can reach a forwarded packet: a cheap per-table cache.

Why: a blocklist bouncer (crowdsec, fail2ban) that hooks only input adds an
element every second or so, and each re-validation sends every offloaded flow
back through the forward path (measured: one element a second for 15 s, 15
re-validations, ~800 slow-path packets). Whether a table can meet a forwarded
packet depends only on its base chains' hooks (offloadd.core.revalidate.
meets_forwarded), which change only with chain and table changes, so a verdict
per table is kept and ``list chains`` (no rules, no set elements) is read
again only when a batch of changes adds or deletes chains or tables, or names
a table not seen yet. A netlink overrun or a failed read forgets everything,
and every table counts until it is read again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from offloadd.core.errors import OffloaddError
from offloadd.core.revalidate import NftChanges, Table, meets_forwarded, policy_tables

log = logging.getLogger("offloadd")

ChainHooks = Mapping[Table, frozenset[str]]


class PolicyScope:
    def __init__(self, read_hooks: Callable[[], ChainHooks]) -> None:
        self._read_hooks = read_hooks
        self._reaches: dict[Table, bool] = {}
        self.reads_total = 0

    def forget(self) -> None:
        self._reaches.clear()

    def verdicts(self, changes: NftChanges, own_family: str, own_table: str,
                 own_pid: int) -> Callable[[str, str], bool]:
        """Updates the cache for this batch; returns reaches(family, table).

        A table whose chains or existence changed in the batch counts if it
        could meet a forwarded packet before the batch or can after it (the
        change may have removed or added the chain that did).
        """
        if changes.overrun:
            self.forget()
            return _everywhere
        touched, hooks_changed = policy_tables(changes, own_family, own_table, own_pid)
        before = {t: self._reaches.get(t, True) for t in hooks_changed}
        if hooks_changed or touched - self._reaches.keys():
            try:
                hooks = self._read_hooks()
            except OffloaddError as e:
                log.warning("cannot list chains to see which tables a forwarded packet "
                            "meets (%s): every change counts", e)
                self.forget()
                return _everywhere
            self.reads_total += 1
            # Read after the events: a table named in them and not listed now
            # has no chain (or is gone), so it meets nothing.
            self._reaches = {t: meets_forwarded(t[0], h) for t, h in hooks.items()}
            for t in touched - self._reaches.keys():
                self._reaches[t] = False
        verdict = {t: before.get(t, False) or self._reaches.get(t, True) for t in touched}

        def reaches(family: str, table: str) -> bool:
            return verdict.get((family, table), True)
        return reaches

    def reaches(self, family: str, table: str) -> bool | None:
        """The cached verdict (None: not known)."""
        return self._reaches.get((family, table))


def _everywhere(_family: str, _table: str) -> bool:
    return True
