"""What offloaded PPPoE frames look like on the wire (a diagnosis, not a test).

Runs inside the lab VM on the host's root (it needs tcpdump and ethtool):
    lab/vm-run.sh 7 .venv/bin/python lab/gateway-wire.py
Builds the gateway of tests/lab/gateway.py, sends UDP flows from the LAN host
through PPPoE, and captures the frames at the ISP end (isp eth0) and leaving
the gateway (gw eth1), first on the slow path, then with a flowtable of
{br-lan, ppp0, wg0, lan0, eth1} once the flows are offloaded, then the same with
checksum offloads off on every veth of the PPPoE link (ethtool -K tx off).
Prints the captures (tcpdump -e -vv: MACs, VLAN, PPPoE session id, IP and UDP
checksums), the gateway's PPPoE session, its ppp0 neighbours and counters.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.lab import conntrack
from tests.lab.gateway import ISP_SERVER_V4, ISP_SERVER_V6, Gateway, gateway_lab
from tests.lab.netns import Netns
from tests.lab.traffic import LIFETIME_S, udp_echo_server, udp_flows, wait_for

PORT = 7000


def sh(ns: Netns, cmd: str) -> str:
    proc = ns.run("sh", "-c", cmd, check=False)
    return (proc.stdout + proc.stderr).strip()


def capture(ns: Netns, dev: str, seconds: float, count: int = 16) -> subprocess.Popen[str]:
    # No capture filter: "vlan and pppoes" fails in the kernel with the veths'
    # offloaded VLAN tags (tcpdump then filters in user space and misses most).
    return ns.popen("timeout", str(seconds), "tcpdump", "-i", dev, "-e", "-n", "-vv", "-c",
                    str(count), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def section(title: str) -> None:
    print(f"\n===== {title} =====", flush=True)


def round_(g: Gateway, title: str) -> None:
    section(title)
    isp_cap = capture(g.isp, "eth0", 8)
    gw_cap = capture(g.gw, "eth1", 8)
    # What reaches the LAN host (replies), whatever their ethertype.
    lan_cap = g.lan.popen("timeout", "8", "tcpdump", "-i", "eth0", "-e", "-n", "-vv", "-c", "16",
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    before = sh(g.isp, "ip -s link show dev " + g.isp_ppp)
    sh(g.lan, "nstat -n")
    sh(g.gw, "nstat -n")
    lan_before = sh(g.lan, "ip -s link show dev eth0")
    time.sleep(8.5)
    print("--- ISP end (isp eth0):\n" + isp_cap.communicate()[0])
    print("--- at the gateway's eth1 (both directions):\n" + gw_cap.communicate()[0])
    print("--- at the LAN host (lan eth0, IPv6 UDP left out):\n" + lan_cap.communicate()[0])
    print("--- ISP ppp device before/after:\n" + before + "\n"
          + sh(g.isp, "ip -s link show dev " + g.isp_ppp))
    print("--- LAN host eth0 before/after:\n" + lan_before + "\n"
          + sh(g.lan, "ip -s link show dev eth0"))
    print("--- nstat on the LAN host:\n" + sh(g.lan, "nstat"))
    print("--- nstat on the gateway:\n" + sh(g.gw, "nstat"))
    print("--- gateway lan0 / br-lan / eth1 / eth1.7 / ppp0 counters:\n"
          + sh(g.gw, "ip -s -br link; ip -s link show dev lan0"))
    print("--- offloaded conntrack entries:",
          conntrack.offloaded_count(g.gw, 4), "ipv4,", conntrack.offloaded_count(g.gw, 6), "ipv6")
    print("--- ISP wire counters:\n" + sh(g.isp, "nft list table netdev wire"))


FLOWTABLE = """table inet ft {
 flowtable ft { hook ingress priority 0; devices = { "br-lan", "ppp0", "wg0", "lan0", "eth1" }; }
 chain forward { type filter hook forward priority 0; policy accept;
  ct state established flow add @ft
 }
}
"""


def offload(g: Gateway) -> None:
    """The flowtable over every device of the gateway, and up to 60 s for
    the flows to be offloaded (a miss is printed: this is a diagnosis)."""
    g.gw.nft(FLOWTABLE)
    try:
        wait_for(lambda: conntrack.offloaded_count(g.gw) >= 4, 60, what="4 offloaded flows")
    except AssertionError as e:
        print(e)


def main() -> int:
    # The LAN host keeps veth's checksum offload: what 7.x then sends (below).
    with gateway_lab(lan_partial_csum="--full-csum" not in sys.argv) as g:
        print(sh(g.gw, "uname -r"))
        section("gateway")
        print(sh(g.gw, "cat /proc/net/pppoe; ip -d link show ppp0; ip neigh show; "
                       "ip -6 neigh show; ip route; ip -6 route"))
        print(f"ISP end MAC {g.isp_mac}, gateway eth1 MAC {g.gw_eth1_mac}")
        print(sh(g.isp, "ip -br link; ethtool -k eth0 | grep -E 'checksum|vlan'"))
        g.isp.nft("table netdev wire {\ncounter to_peer {}\ncounter misaddressed {}\n"
                  "chain in { type filter hook ingress device \"eth0\" priority -500; "
                  "policy accept;\n"
                  f"ether type 8021q vlan id 7 vlan type 0x8864 ether daddr {g.isp_mac} "
                  "counter name \"to_peer\"\n"
                  f"ether type 8021q vlan id 7 vlan type 0x8864 ether daddr != {g.isp_mac} "
                  "counter name \"misaddressed\"\n}\n}\n")
        with udp_echo_server(g.isp, ISP_SERVER_V4, PORT), \
                udp_echo_server(g.isp, ISP_SERVER_V6, PORT):
            for want in (ISP_SERVER_V4, f"[{ISP_SERVER_V6}]"):
                wait_for(lambda w=want: f"{w}:{PORT} " in g.isp.out("ss", "-lun"), 60,
                         what=f"the echo server on {want}")
            gens = [udp_flows(g.lan, a, port=PORT, flows=2, seconds=LIFETIME_S, interval=0.5)
                    for a in (ISP_SERVER_V4, ISP_SERVER_V6)]
            try:
                round_(g, "slow path (no flowtable)")
                offload(g)
                print(sh(g.gw, "conntrack -L 2>/dev/null | grep 7000"))
                round_(g, "offloaded, flowtable {br-lan, ppp0, wg0, lan0, eth1}")
                section("checksum offloads off on the PPPoE link's veths (tx off)")
                print(sh(g.gw, "ethtool -K eth1 tx off; ethtool -K eth1.7 tx off; "
                               "ethtool -k eth1 | grep -E 'tx-checksumming|vlan'"))
                print(sh(g.isp, "ethtool -K eth0 tx off; ethtool -K eth0.7 tx off"))
                g.gw.run("nft", "delete", "table", "inet", "ft")
                g.gw.run("conntrack", "-F", check=False)
                time.sleep(2)
                offload(g)
                round_(g, "offloaded, tx checksum offload off")
            finally:
                for gen in gens:
                    print("flows:", gen.finish())
        section("pppd logs")
        print(g.logs())
    return 0


if __name__ == "__main__":
    sys.exit(main())
