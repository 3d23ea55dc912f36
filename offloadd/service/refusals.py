"""Devices the kernel will not attach, found by dry runs and left out for a while.

One device the kernel refuses (a driver without the needed ndo, hardware
offload on a NIC that cannot) must not hold back every other change in the
same batch. The search costs dry runs, not transactions, and a refused device
is tried again when its link is re-created, on reload, or after a while.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from offloadd.core.errors import DeviceVanishedError, NftError
from offloadd.core.model import Link, TableState
from offloadd.core.plan import Plan, UpdateFlowtableFlags, compute_plan


class Refusals:
    """device -> (its ifindex, the kernel's message) while it is left out,
    at most ``retry_s`` (Timing.retry_refused_s)."""

    def __init__(self, retry_s: float) -> None:
        self.retry_s = retry_s
        self._refused: dict[str, tuple[int, str]] = {}
        self.since = 0.0  # when the current set of refusals began

    def __bool__(self) -> bool:
        return bool(self._refused)

    def clear(self) -> None:
        self._refused.clear()

    def current(self, links: Iterable[Link]) -> dict[str, str]:
        """Refused devices still worth leaving out: same link, not yet due a retry."""
        if self._refused and time.monotonic() - self.since > self.retry_s:
            self._refused.clear()
        index = {link.name: link.index for link in links}
        # A name without a link (a wildcard, a name declared ahead of its
        # device) was stored with index 0: kept until a link takes the name.
        self._refused = {d: v for d, v in self._refused.items() if index.get(d, 0) == v[0]}
        return {d: msg for d, (_i, msg) in self._refused.items()}

    def add(self, bad: Mapping[str, str], links: Iterable[Link]) -> None:
        index = {link.name: link.index for link in links}
        if not self._refused:
            self.since = time.monotonic()
        self._refused.update({d: (index.get(d, 0), m) for d, m in bad.items()})


def isolate_refused(current: TableState | None, plan: Plan,
                    table_without: Callable[[set[str]], TableState],
                    check: Callable[[Plan], None]) -> dict[str, str]:
    """Which devices this plan adds make the kernel refuse it, and why.

    ``table_without(devices)`` is the desired table with those devices left
    out; ``check`` is a dry run. First without any of the devices the plan
    adds (if that is refused too, the devices are not the cause: {}), then
    halves of them until each refused device stands alone. Two devices that
    are refused only together are not found; the whole plan then fails as
    before and is retried.
    """
    added = sorted(plan.attached_devices)

    def refusal(leave_out: set[str]) -> NftError | None:
        trial = compute_plan(table_without(leave_out), current)
        if trial.is_empty and current is not None:
            # Nothing left to send proves nothing: re-sending the flags
            # asks the kernel whether it takes any batch now.
            trial = Plan(tuple(UpdateFlowtableFlags(ft) for ft in current.flowtables))
        try:
            check(trial)
        except DeviceVanishedError:
            raise
        except NftError as e:
            return e
        return None

    if not added or refusal(set(added)) is not None:
        return {}
    bad: dict[str, str] = {}

    def search(group: list[str]) -> None:
        err = refusal(set(added) - set(group))
        if err is None:
            return
        if len(group) == 1:
            bad[group[0]] = str(err).removeprefix("nft refused the transaction: ")
            return
        half = len(group) // 2
        search(group[:half])
        search(group[half:])

    search(added)
    return bad
