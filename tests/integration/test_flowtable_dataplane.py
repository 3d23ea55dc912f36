"""A flowtable made through libnftables really offloads lab traffic.

Once a flow is offloaded, its packets are switched at the flowtable's ingress
hook: conntrack marks it [OFFLOAD] and the router's forward chain stops seeing
its packets while the traffic itself goes on. One topology and one window for
TCP and UDP over IPv4 and IPv6 at once (four tests of one each cost four
topologies, servers and windows in the emulated VM).
"""

from __future__ import annotations

import time

from tests.lab import conntrack
from tests.lab.nftns import nft_apply, rule_counter_packets
from tests.lab.topology import Lab
from tests.lab.traffic import (
    LIFETIME_S,
    SETTLE_S,
    Background,
    iperf3_client,
    iperf3_server,
    tx_packets,
    udp_echo_server,
    udp_flows,
    wait_for,
)

RULESET = """
table inet lab {
    flowtable ft {
        hook ingress priority 0; devices = { lan0, wan0 }; counter;
    }
    chain forward {
        type filter hook forward priority 0; policy accept;
        counter
        meta l4proto { tcp, udp } flow add @ft
    }
}
"""
# iperf3 serves one client at a time: a server per family. Capped, so that the
# two streams leave the 1-vCPU VM room for the UDP flows before they are
# offloaded (20 Mbit/s: ~1700 segments a second, thousands in the window).
TCP_PORT = {4: 5201, 6: 5202}
TCP_RATE = ("-b", "20M")
UDP_FLOWS = 4


def _offloaded(lab: Lab, family: int, proto: str, dport: int) -> list[conntrack.CtEntry]:
    return [e for e in conntrack.entries(lab.router, family)
            if e.proto == proto and e.dport == dport and e.offloaded]


def _all_offloaded(lab: Lab) -> bool:
    return all(_offloaded(lab, fam, "tcp", TCP_PORT[fam])
               and len(_offloaded(lab, fam, "udp", 7000)) == UDP_FLOWS for fam in (4, 6))


def test_tcp_and_udp_flows_offloaded_and_bypass_the_forward_chain(lab: Lab) -> None:
    nft_apply(lab.router, RULESET)
    with iperf3_server(lab.server, TCP_PORT[4]), iperf3_server(lab.server, TCP_PORT[6]), \
            udp_echo_server(lab.server, "::"):
        tcp: dict[int, Background] = {}
        udp: dict[int, Background] = {}
        try:
            for fam in (4, 6):
                tcp[fam] = iperf3_client(lab.client, lab.server_addr(fam), seconds=LIFETIME_S,
                                         port=TCP_PORT[fam], extra=TCP_RATE)
                udp[fam] = udp_flows(lab.client, lab.server_addr(fam), flows=UDP_FLOWS,
                                     seconds=LIFETIME_S, interval=0.02)
            wait_for(lambda: _all_offloaded(lab), SETTLE_S,
                     what=f"[OFFLOAD] entries: a tcp flow and {UDP_FLOWS} udp flows per family")
            before = rule_counter_packets(lab.router, "inet", "lab", "forward")
            tx = tx_packets(lab.router, "wan0")
            time.sleep(2.5)
            crossed = tx_packets(lab.router, "wan0") - tx
            after = rule_counter_packets(lab.router, "inet", "lab", "forward")
            for fam, client in tcp.items():
                assert client.proc.poll() is None, (fam, client.proc.communicate())
            results = {fam: g.finish() for fam, g in udp.items()}
        finally:
            for g in (*tcp.values(), *udp.values()):
                g.stop()
    assert before > 0, "the forward chain never saw the handshakes: counter broken?"
    for fam, result in results.items():
        assert result["received"] > result["sent"] * 0.8, (fam, result)
    # Thousands of TCP segments crossed the router in the window; the chain saw ~none.
    assert crossed > 1000, f"too little traffic to judge: {crossed} packets out of wan0"
    assert after - before <= 10, f"forward chain still saw {after - before} packets"
