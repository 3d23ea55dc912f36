"""What the daemon needs from the outside world, as small interfaces.

The loop and the reconcile pass see the kernel, the link watcher and systemd
only through these, so the unit tests drive them with in-memory fakes and the
kernel edges stay swappable (e.g. a backend for --check that only plans).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol

from offloadd.core.model import Link, TableState
from offloadd.core.plan import Plan
from offloadd.core.revalidate import NftChanges
from offloadd.core.stack import PppoeSessions
from offloadd.core.xtables import LegacyTables


class Snapshot(Protocol):
    @property
    def links(self) -> tuple[Link, ...]: ...

    @property
    def resync(self) -> bool: ...

    @property
    def route_flushes(self) -> int:
        """Link events so far (this watcher's) that flush the IPv4 route cache."""


class Notify(Protocol):
    """The service manager (systemd) side: readiness, status, watchdog."""

    def ready(self, status: str) -> None: ...

    def status(self, text: str) -> None: ...

    def reloading(self) -> None: ...

    def stopping(self) -> None: ...

    async def run_watchdog(self) -> None: ...


class ChangeSource(Protocol):
    """Committed nf_tables transactions: others' need a reconcile (their forward
    chains) and may call for a re-validation (their policy)."""

    def changes(self) -> AsyncIterator[NftChanges]: ...


class LinkSource(Protocol):
    def snapshots(self) -> AsyncIterator[Snapshot]: ...


class Backend(Protocol):
    def read(self) -> TableState | None: ...

    def other_forward_priorities(self) -> list[int]: ...

    def base_chain_hooks(self) -> dict[tuple[str, str], frozenset[str]]: ...

    def legacy_tables(self) -> LegacyTables: ...

    def pppoe_sessions(self) -> PppoeSessions: ...

    def hw_capable(self, device: str) -> tuple[bool, str]: ...

    def conntrack_limit(self) -> int | None:
        """nf_conntrack_max (None: not readable), which the gate's size follows."""

    def count_elements(self, name: str,
                       after_datagram: Callable[[float], None] | None = None) -> int | None:
        """The elements set ``name`` of offloadd's table holds now (None: no
        such set or table), without listing them; ``after_datagram`` paces it
        (offloadd.kernel.setcount). Called from a worker thread: it must share
        no libnftables context with the loop."""

    def apply(self, plan: Plan) -> str: ...

    def check(self, plan: Plan) -> None: ...

    def ensure_accounting(self) -> None: ...
