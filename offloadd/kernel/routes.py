"""Which device does the router use towards an address? (route lookups for offloadctl)

A flow's devices are not in conntrack; the router's routing table says where
each end lies, which is what the flowtable sees too.
"""

from __future__ import annotations

from pyroute2 import IPRoute, NetlinkError


class RouteLookup:
    def __init__(self) -> None:
        self._ipr = IPRoute()
        self._cache: dict[str, str | None] = {}

    def forget(self) -> None:
        """Drops cached answers (routes change; a long-lived lookup asks again)."""
        self._cache.clear()

    def device_towards(self, addr: str) -> str | None:
        if addr not in self._cache:
            self._cache[addr] = self._lookup(addr)
        return self._cache[addr]

    def _lookup(self, addr: str) -> str | None:
        try:
            routes = self._ipr.route("get", dst=addr)
        except (NetlinkError, OSError, ValueError):  # unreachable, bad address
            return None
        for r in routes:
            oif = r.get("RTA_OIF") or r.get_attr("RTA_OIF")
            if oif:
                links = self._ipr.get_links(oif)
                if links:
                    return str(links[0].get_attr("IFLA_IFNAME"))
        return None

    def close(self) -> None:
        self._ipr.close()
