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
    iperf3_client,
    iperf3_server,
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
        client = iperf3_client(lab.client, lab.server_addr(family), seconds=14,
                               extra=("-i", "1"))
        try:
            wait_for(lambda: _offloaded(lab, family, "tcp", 5201), timeout=10,
                     what="an [OFFLOAD] tcp conntrack entry to port 5201")
            before = rule_counter_packets(lab.router, "inet", "lab", "forward")
            t0 = time.monotonic()
            time.sleep(2.5)
            after = rule_counter_packets(lab.router, "inet", "lab", "forward")
            window = time.monotonic() - t0
            result = client.result()
        finally:
            client.stop()
    assert before > 0, "the forward chain never saw the handshake: counter broken?"
    sent_bytes = result["end"]["sum_sent"]["bytes"]
    rate = sent_bytes / result["end"]["sum_sent"]["seconds"]
    # Thousands of segments crossed the router in the window; the chain saw ~none.
    assert rate * window / 1500 > 1000, f"too little traffic to judge: {rate:.0f} B/s"
    assert after - before <= 10, f"forward chain still saw {after - before} packets"


@pytest.mark.parametrize("family", [4, 6])
def test_udp_flows_offloaded_and_bypass_forward_chain(lab: Lab, family: int) -> None:
    nft_apply(lab.router, RULESET)
    server = lab.server_addr(family)
    with udp_echo_server(lab.server, "::" if family == 6 else "0.0.0.0"):
        client = udp_flows(lab.client, server, flows=4, seconds=14, interval=0.02)
        try:
            wait_for(lambda: len(_offloaded(lab, family, "udp", 7000)) == 4, timeout=10,
                     what="4 [OFFLOAD] udp conntrack entries to port 7000")
            before = rule_counter_packets(lab.router, "inet", "lab", "forward")
            time.sleep(2.5)
            after = rule_counter_packets(lab.router, "inet", "lab", "forward")
            result = client.result()
        finally:
            client.stop()
    assert before > 0
    assert result["received"] > result["sent"] * 0.8, result
    # ~4 flows x 50 pkt/s x 2.5 s x 2 directions = ~1000 packets crossed meanwhile.
    assert after - before <= 10, f"forward chain still saw {after - before} packets"
