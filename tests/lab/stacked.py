"""The lab topology restacked like a gateway: a bridged LAN, a VLAN uplink.

    client [eth0] ---- [lan0] br-lan  router  wan0.7 [wan0] ---- [eth0] eth0.7 server

lan0 becomes the only port of br-lan, which takes the LAN addresses (and
lan0's MAC, so the client's neighbour entry stays right); the server is
reached over VLAN 7 (198.19.7.0/24, fd0f:77::/64), and answers the LAN over it.
Shared by tests/integration/test_stack.py and bench/stack.py. The witnesses
count packets at the ingress of the upper devices (before any flowtable on
them) and at the forward hook: what the fast path skips does not reach them.
"""

from __future__ import annotations

import json

from tests.lab.netns import Netns
from tests.lab.topology import Lab

VLAN_V4 = ("198.19.7.1", "198.19.7.2")
VLAN_V6 = ("fd0f:77::1", "fd0f:77::2")
UPPER = frozenset({"br-lan", "wan0.7"})
LOWER = frozenset({"lan0", "wan0"})
WITNESS = """
table netdev witness {
    chain upper_br { type filter hook ingress device "br-lan" priority -500; counter; }
    chain upper_vlan { type filter hook ingress device "wan0.7" priority -500; counter; }
}
table inet witness_fwd {
    chain forward { type filter hook forward priority -10; policy accept; counter; }
}
"""


# Variants (restack): QinQ, an 802.1ad outer tag 7 with an 802.1Q inner tag
# 8 on wan0 (two tags: the most the kernel's fast path pushes); and a LAN
# whose bridge port is a bond (active-backup) over lan0.
QINQ_UPPER = frozenset({"br-lan", "wan0.7.8"})
BOND_LOWER = frozenset({"bond0", "wan0"})


def server_addr(family: int) -> str:
    return VLAN_V4[1] if family == 4 else VLAN_V6[1]


def _vlan(dev: str, qinq: bool) -> tuple[str, str]:
    """The commands that make the L3 VLAN device over ``dev``, and its name."""
    if not qinq:
        return f"ip link add link {dev} name {dev}.7 type vlan id 7\n", f"{dev}.7"
    return (f"ip link add link {dev} name {dev}.7 type vlan proto 802.1ad id 7\n"
            f"ip link set {dev}.7 up\n"
            f"ip link add link {dev}.7 name {dev}.7.8 type vlan id 8\n", f"{dev}.7.8")


def restack(lab: Lab, *, qinq: bool = False, bond: bool = False) -> None:
    """Builds the stack (one shell per namespace) and the witnesses."""
    lan = lab.lan
    port = "lan0"
    if bond:
        lab.router.sh("ip link add bond0 type bond mode active-backup\n"
                      "ip link set lan0 down\n"
                      "ip link set lan0 master bond0\n"
                      "ip link set bond0 up\n"
                      "ip link set lan0 up\n")
        port = "bond0"
    make_wan, wan = _vlan("wan0", qinq)
    make_peer, peer = _vlan("eth0", qinq)
    lab.router.sh(f"""
ip addr flush dev lan0
ip link add br-lan type bridge
ip link set br-lan addr $(cat /sys/class/net/lan0/address)
ip link set {port} master br-lan
ip addr add {lan.router_v4}/24 dev br-lan
ip addr add {lan.router_v6}/64 dev br-lan nodad
ip link set br-lan up
{make_wan}ip addr add {VLAN_V4[0]}/24 dev {wan}
ip addr add {VLAN_V6[0]}/64 dev {wan} nodad
ip link set {wan} up
""")
    v4_net = lan.host_v4.rsplit(".", 1)[0] + ".0/24"
    v6_net = lan.host_v6.rsplit(":", 1)[0] + ":/64"
    lab.server.sh(f"""
{make_peer}ip addr add {VLAN_V4[1]}/24 dev {peer}
ip addr add {VLAN_V6[1]}/64 dev {peer} nodad
ip link set {peer} up
ip route add {v4_net} via {VLAN_V4[0]}
ip -6 route add {v6_net} via {VLAN_V6[0]}
""")
    lab.router.nft(WITNESS.replace('"wan0.7"', f'"{wan}"'))


def witnesses(ns: Netns) -> dict[str, int]:
    """Packets each witness counted: br (br-lan ingress), vlan (wan0.7
    ingress), forward (the forward hook)."""
    out: dict[str, int] = {}
    for table in ("netdev witness", "inet witness_fwd"):
        for item in json.loads(ns.out("nft", "-j", "list", "table", *table.split()))["nftables"]:
            rule = item.get("rule")
            if not rule:
                continue
            for expr in rule["expr"]:
                if "counter" in expr:
                    out[rule["chain"].removeprefix("upper_")] = int(
                        expr["counter"]["packets"])
    return out
