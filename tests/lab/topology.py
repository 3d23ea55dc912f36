"""The lab topology: client and server routed through a router namespace.

    client [eth0] ---- [lan0] router [wan0] ---- [eth0] server
    client2 [eth0] --- [lan1] /

IPv4 from the benchmarking range 198.18.0.0/15 and IPv6 from a ULA prefix,
so no address here can be anybody's real host. The router forwards both
families; the second LAN leg (lan1, client2) lets tests change devices while
flows run through lan0/wan0.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tests.lab.netns import Netns, create_netns, delete_netns

_ids = itertools.count()


@dataclass(frozen=True)
class Leg:
    """One routed link: the router's device and the host at the far end."""

    router_dev: str
    host: Netns
    router_v4: str
    host_v4: str
    router_v6: str
    host_v6: str


@dataclass(frozen=True)
class Lab:
    router: Netns
    client: Netns
    server: Netns
    client2: Netns
    lan: Leg
    wan: Leg
    lan2: Leg

    @property
    def namespaces(self) -> tuple[Netns, ...]:
        return (self.router, self.client, self.server, self.client2)

    def server_addr(self, family: int) -> str:
        return self.wan.host_v4 if family == 4 else self.wan.host_v6


# DAD would leave fresh IPv6 addresses "tentative" for a second or more under
# TCG; addresses are added with nodad too.
_NO_DAD = "net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0"


def _leg(router: Netns, host: Netns, router_dev: str, subnet: int) -> tuple[Leg, str, str]:
    """The leg plus the shell lines that build it on the router and on the host.

    Building a namespace is one shell per namespace: every ``ip netns exec``
    costs a process start, which is slow in an emulated VM.
    """
    leg = Leg(router_dev=router_dev, host=host,
              router_v4=f"198.18.{subnet}.1", host_v4=f"198.18.{subnet}.2",
              router_v6=f"fd0f:{subnet}::1", host_v6=f"fd0f:{subnet}::2")
    on_router = "\n".join([
        f"ip link add {router_dev} type veth peer name eth0 netns {host.name}",
        f"ip addr add {leg.router_v4}/24 dev {router_dev}",
        f"ip addr add {leg.router_v6}/64 dev {router_dev} nodad",
        f"ip link set {router_dev} up",
    ])
    on_host = "\n".join([
        f"sysctl -q -w {_NO_DAD}",
        f"ip addr add {leg.host_v4}/24 dev eth0",
        f"ip addr add {leg.host_v6}/64 dev eth0 nodad",
        "ip link set eth0 up",
        f"ip route add default via {leg.router_v4}",
        f"ip -6 route add default via {leg.router_v6}",
    ])
    return leg, on_router, on_host


def recreate_leg(router: Netns, leg: Leg, new_dev: str) -> Leg:
    """Deletes ``leg``'s veth pair and builds the same leg again with the
    router's end called ``new_dev``: a device that registers now (a rename
    would keep the one the kernel may have hooked already)."""
    subnet = int(leg.router_v4.split(".")[2])
    router.run("ip", "link", "del", leg.router_dev)  # the host's end goes with it
    new, on_router, on_host = _leg(router, leg.host, new_dev, subnet)
    router.sh(on_router)
    leg.host.sh(on_host)
    return new


@contextmanager
def lab_topology() -> Iterator[Lab]:
    """Builds the lab, yields it, and always tears every namespace down."""
    prefix = f"ol{os.getpid() % 100000}x{next(_ids)}"
    made: list[Netns] = []
    try:
        for role in ("router", "client", "server", "client2"):
            made.append(create_netns(f"{prefix}-{role}"))
        router, client, server, client2 = made
        lan, r_lan, h_lan = _leg(router, client, "lan0", 1)
        wan, r_wan, h_wan = _leg(router, server, "wan0", 2)
        lan2, r_lan2, h_lan2 = _leg(router, client2, "lan1", 3)
        router.sh(f"sysctl -q -w {_NO_DAD} net.ipv4.ip_forward=1 "
                  "net.ipv6.conf.all.forwarding=1\n" + "\n".join([r_lan, r_wan, r_lan2]))
        for host, script in ((client, h_lan), (server, h_wan), (client2, h_lan2)):
            host.sh(script)
        yield Lab(router=router, client=client, server=server, client2=client2,
                  lan=lan, wan=wan, lan2=lan2)
    finally:
        for ns in reversed(made):
            delete_netns(ns)
