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
from tests.lab.traffic import SETTLE_S, TCP_PORTS, dual_stack_traffic, tx_packets, wait_for

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
UDP_FLOWS = 4


def _offloaded(lab: Lab, family: int, proto: str, dport: int) -> list[conntrack.CtEntry]:
    return [e for e in conntrack.entries(lab.router, family)
            if e.proto == proto and e.dport == dport and e.offloaded]


def _all_offloaded(lab: Lab) -> bool:
    return all(_offloaded(lab, fam, "tcp", TCP_PORTS[fam])
               and len(_offloaded(lab, fam, "udp", 7000)) == UDP_FLOWS for fam in (4, 6))


def test_tcp_and_udp_flows_offloaded_and_bypass_the_forward_chain(lab: Lab) -> None:
    nft_apply(lab.router, RULESET)
    with dual_stack_traffic(lab, udp_per_family=UDP_FLOWS, udp_interval=0.02) as traffic:
        wait_for(lambda: _all_offloaded(lab), SETTLE_S,
                 what=f"[OFFLOAD] entries: a tcp flow and {UDP_FLOWS} udp flows per family")
        before = rule_counter_packets(lab.router, "inet", "lab", "forward")
        tx = tx_packets(lab.router, "wan0")
        time.sleep(2.5)
        crossed = tx_packets(lab.router, "wan0") - tx
        after = rule_counter_packets(lab.router, "inet", "lab", "forward")
        for fam, client in traffic.tcp.items():
            assert client.proc.poll() is None, (fam, client.proc.communicate())
        results = {fam: g.finish() for fam, g in traffic.udp.items()}
    assert before > 0, "the forward chain never saw the handshakes: counter broken?"
    for fam, result in results.items():
        assert result["received"] > result["sent"] * 0.8, (fam, result)
    # Thousands of TCP segments crossed the router in the window; the chain saw ~none.
    assert crossed > 1000, f"too little traffic to judge: {crossed} packets out of wan0"
    assert after - before <= 10, f"forward chain still saw {after - before} packets"
