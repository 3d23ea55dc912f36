"""Finds conntrack entries a flowtable still forwards but no longer marks offloaded.

Why a conntrack scan: the flowtable's entries cannot be listed, and the
flows' packets never reach a chain where a rule could count them (measured on
7.3.4: the forward chain's counter stays flat while the flows keep flowing).
What does show is the conntrack entry: not [OFFLOAD], yet holding the
flowtable entry's reference; this reports such entries with their timeouts
and offloadd.core.repair.left_behind judges them. The kernel filters the dump to
entries without the offload mark (>= 5.15); each is then checked here from
three attributes, and only a candidate is parsed.

Which flowtable holds an entry is not in conntrack either: the router's
routing table says which devices the flow uses, as the flowtable saw them.
Entries through none of offloadd's devices belong to someone else's
flowtable and are only counted.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from offloadd.core.flows import IPS_OFFLOAD
from offloadd.core.repair import HELD_MIN_USE, HeldEntry, Scan, held_without_offload
from offloadd.kernel.conntrack import entries_by_status
from offloadd.kernel.ctnetlink import SocketFactory, open_ctnetlink

# Entries looked up and reported per scan (lookups are cached per address):
# enough to name every flowtable involved, bounded on a gateway with a
# million entries.
ATTRIBUTE_AT_MOST = 4096


class DeviceLookup(Protocol):
    def device_towards(self, addr: str) -> str | None: ...

    def forget(self) -> None: ...

    def close(self) -> None: ...


def route_lookup() -> DeviceLookup:
    """A route lookup, its module imported only when one is needed."""
    from offloadd.kernel.routes import RouteLookup  # noqa: PLC0415 - opened only when needed

    return RouteLookup()


class ConntrackScanner:
    """Scans both families for entries left behind (the daemon's LeftBehindSource).

    Not thread-safe: the route lookup it keeps (a pyroute2 socket with an
    event loop of its own) is opened on first need and used from then on,
    so scans must run on one thread.
    """

    def __init__(self, socket_factory: SocketFactory = open_ctnetlink,
                 routes: Callable[[], DeviceLookup] = route_lookup) -> None:
        self._factory = socket_factory
        self._routes = routes
        self._lookup: DeviceLookup | None = None

    def close(self) -> None:
        lookup, self._lookup = self._lookup, None
        if lookup is not None:
            lookup.close()

    def scan(self, flowtable_of: Mapping[str, str]) -> Scan:
        """``flowtable_of`` maps each of offloadd's devices to its flowtable."""
        # Both families in one dump: the kernel walks its whole table per dump
        # whatever the family asked (1M entries under TCG: 1.4-1.65 s of CPU
        # for the two walks a scan made before).
        found = [(e.id, e.timeout or 0, e.orig.src, e.orig.dst)  # id, timeout, src, dst
                 for e in entries_by_status(socket.AF_UNSPEC, 0, IPS_OFFLOAD,
                                            socket_factory=self._factory,
                                            keep=held_without_offload,
                                            min_use=HELD_MIN_USE)]
        at = time.monotonic()
        if not found:
            return Scan(at=at)
        if self._lookup is None:
            self._lookup = self._routes()
        routes = self._lookup
        routes.forget()
        held: dict[int, HeldEntry] = {}
        # Past the bound, entries are left to a later scan: replacing the
        # flowtables named now frees theirs too, if they share them.
        for ct_id, timeout, src, dst in found[:ATTRIBUTE_AT_MOST]:
            names = sorted({flowtable_of[d] for d in (routes.device_towards(src),
                                                       routes.device_towards(dst))
                            if d is not None and d in flowtable_of})
            held[ct_id] = HeldEntry(timeout, names[0] if names else None)
        return Scan(at=at, held=held)
