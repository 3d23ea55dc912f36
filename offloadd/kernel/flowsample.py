"""Offloaded flows' packet counters and the devices they cross, for the stack guard.

Why here: the counters are conntrack's (the flowtable keeps them per
direction when it has the ``counter`` flag, which offloadd's flowtables
have, and conntrack accounting is on), and which devices a flow crosses is
the routing table's (conntrack does not say): the route towards each end of
the flow names the device the forward hook saw it on, the one offloadd
selected (br-lan, ppp0), whatever devices beneath it the fast path uses.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from offloadd.core.flows import IPS_OFFLOAD
from offloadd.core.guard import FlowCounts, Look
from offloadd.kernel.conntrack import entries_by_status
from offloadd.kernel.ctnetlink import SocketFactory, open_ctnetlink
from offloadd.kernel.leftbehind import DeviceLookup, route_lookup

# Flows looked at per sample: a black hole swallows every flow through its
# device, so a bounded sample shows it; the dump order is the conntrack
# hash's, the same from one sample to the next.
SAMPLE_AT_MOST = 2048


class FlowSampler:
    """The stack guard's FlowSampleSource. Not thread-safe: sample on one thread."""

    def __init__(self, socket_factory: SocketFactory = open_ctnetlink,
                 routes: Callable[[], DeviceLookup] = route_lookup,
                 at_most: int = SAMPLE_AT_MOST) -> None:
        self._factory = socket_factory
        self._routes = routes
        self._lookup: DeviceLookup | None = None
        self._at_most = at_most

    def close(self) -> None:
        lookup, self._lookup = self._lookup, None
        if lookup is not None:
            lookup.close()

    def sample(self) -> Look:
        flows: dict[int, FlowCounts] = {}
        if self._lookup is None:
            self._lookup = self._routes()
        routes = self._lookup
        routes.forget()
        # Both families in one dump: the kernel walks its whole table per dump.
        for e in entries_by_status(socket.AF_UNSPEC, IPS_OFFLOAD, IPS_OFFLOAD,
                                   socket_factory=self._factory):
            if e.orig_packets is None or e.reply_packets is None:
                continue  # begun before accounting was on: nothing to judge by
            devices = frozenset(d for d in (routes.device_towards(e.orig.src),
                                            routes.device_towards(e.orig.dst))
                                if d is not None)
            flows[e.id] = FlowCounts(e.id, e.orig_packets, e.reply_packets, devices,
                                     4 if e.family == socket.AF_INET else 6)
            if len(flows) >= self._at_most:
                break
        return Look(at=time.monotonic(), flows=flows)
