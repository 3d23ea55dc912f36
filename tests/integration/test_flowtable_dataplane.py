"""A flowtable made through libnftables really offloads lab traffic.

Once a flow is offloaded, its packets are switched at the flowtable's ingress
hook: conntrack marks it [OFFLOAD] and the router's forward chain stops seeing
its packets while the traffic itself goes on.
"""

from __future__ import annotations

import time

import pytest

from tests.lab import conntrack
from tests.lab.nftns import nft_apply, rule_counter_packets
from tests.lab.topology import Lab
from tests.lab.traffic import (
    LIFETIME_S,
    SETTLE_S,
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


def _offloaded(lab: Lab, family: int, proto: str, dport: int) -> list[conntrack.CtEntry]:
    return [e for e in conntrack.entries(lab.router, family)
            if e.proto == proto and e.dport == dport and e.offloaded]


@pytest.mark.parametrize("family", [4, 6])
def test_tcp_flow_offloaded_and_bypasses_forward_chain(lab: Lab, family: int) -> None:
    nft_apply(lab.router, RULESET)
    with iperf3_server(lab.server):
        client = iperf3_client(lab.client, lab.server_addr(family), seconds=LIFETIME_S)
        try:
            wait_for(lambda: _offloaded(lab, family, "tcp", 5201), timeout=SETTLE_S,
                     what="an [OFFLOAD] tcp conntrack entry to port 5201")
            before, crossed, after = _window(lab)
            assert client.proc.poll() is None, client.proc.communicate()
        finally:
            client.stop()
    assert before > 0, "the forward chain never saw the handshake: counter broken?"
    # Thousands of segments crossed the router in the window; the chain saw ~none.
    assert crossed > 1000, f"too little traffic to judge: {crossed} packets out of wan0"
    assert after - before <= 10, f"forward chain still saw {after - before} packets"


def _window(lab: Lab) -> tuple[int, int, int]:
    """Forward-chain packets before and after a 2.5 s window, and the packets
    that left the router towards the server meanwhile (wan0's counter)."""
    before = rule_counter_packets(lab.router, "inet", "lab", "forward")
    tx = tx_packets(lab.router, "wan0")
    time.sleep(2.5)
    crossed = tx_packets(lab.router, "wan0") - tx
    return before, crossed, rule_counter_packets(lab.router, "inet", "lab", "forward")


@pytest.mark.parametrize("family", [4, 6])
def test_udp_flows_offloaded_and_bypass_forward_chain(lab: Lab, family: int) -> None:
    nft_apply(lab.router, RULESET)
    server = lab.server_addr(family)
    with udp_echo_server(lab.server, "::" if family == 6 else "0.0.0.0"):
        client = udp_flows(lab.client, server, flows=4, seconds=LIFETIME_S, interval=0.02)
        try:
            wait_for(lambda: len(_offloaded(lab, family, "udp", 7000)) == 4, timeout=SETTLE_S,
                     what="4 [OFFLOAD] udp conntrack entries to port 7000")
            before, crossed, after = _window(lab)
            result = client.finish()
        finally:
            client.stop()
    assert before > 0
    assert result["received"] > result["sent"] * 0.8, result
    # ~4 flows x 50 pkt/s x 2.5 s one way crossed meanwhile (fewer under a slow VM).
    assert crossed > 100, f"too little traffic to judge: {crossed} packets out of wan0"
    assert after - before <= 10, f"forward chain still saw {after - before} packets"
