"""A flowtable made through libnftables really offloads lab traffic.

Once a flow is offloaded, its packets are switched at the flowtable's ingress
hook: conntrack marks it [OFFLOAD] and the router's forward chain stops seeing
its packets while the traffic itself goes on. Whether it goes on is judged
where the router's work shows: what the client sent against what reached the
server's stack, and what the server answered against what reached the
client's, counted by nft at both ends (a 1-vCPU VM starves the echo server
while iperf3 runs: datagrams it never read say nothing of the router). One
topology and one window for TCP and UDP over IPv4 and IPv6 at once (four
tests of one each cost four topologies, servers and windows in the emulated
VM).
"""

from __future__ import annotations

import time

from tests.lab import conntrack
from tests.lab.netns import Netns
from tests.lab.nftns import counters, nft_apply, rule_counter_packets
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


def _witness(ns: Netns, out: str) -> None:
    """Counters per family of the UDP echo traffic this end sends (``out``:
    "dport" at the client, "sport" at the server) and receives."""
    into_port = "sport" if out == "dport" else "dport"
    ns.nft("table inet w {\n"
           + "".join(f"counter out{f} {{}}\ncounter in{f} {{}}\n" for f in (4, 6))
           + "chain out { type filter hook output priority 0; policy accept;\n"
           + "".join(f"meta nfproto ipv{f} udp {out} 7000 counter name out{f}\n" for f in (4, 6))
           + "}\nchain in { type filter hook input priority 0; policy accept;\n"
           + "".join(f"meta nfproto ipv{f} udp {into_port} 7000 counter name in{f}\n"
                     for f in (4, 6))
           + "}\n}\n")


def _offloaded(lab: Lab, family: int, proto: str, dport: int) -> list[conntrack.CtEntry]:
    return [e for e in conntrack.entries(lab.router, family)
            if e.proto == proto and e.dport == dport and e.offloaded]


def _all_offloaded(lab: Lab) -> bool:
    return all(_offloaded(lab, fam, "tcp", TCP_PORTS[fam])
               and len(_offloaded(lab, fam, "udp", 7000)) == UDP_FLOWS for fam in (4, 6))


def test_tcp_and_udp_flows_offloaded_and_bypass_the_forward_chain(lab: Lab) -> None:
    nft_apply(lab.router, RULESET)
    _witness(lab.client, "dport")
    _witness(lab.server, "sport")
    with dual_stack_traffic(lab, udp_per_family=UDP_FLOWS, udp_interval=0.02) as traffic:
        wait_for(lambda: _all_offloaded(lab), SETTLE_S,
                 what=f"[OFFLOAD] entries: a tcp flow and {UDP_FLOWS} udp flows per family")
        before = rule_counter_packets(lab.router, "inet", "lab", "forward")
        tx = tx_packets(lab.router, "wan0")
        replies = counters(lab.client)
        time.sleep(2.5)
        replies_after = counters(lab.client)
        crossed = tx_packets(lab.router, "wan0") - tx
        after = rule_counter_packets(lab.router, "inet", "lab", "forward")
        for fam, iperf in traffic.tcp.items():
            assert iperf.proc.poll() is None, (fam, iperf.proc.communicate())
        results = {fam: g.finish() for fam, g in traffic.udp.items()}
    # Clients and servers have ended: nothing is in flight.
    server = counters(lab.server)
    client = counters(lab.client)
    assert before > 0, "the forward chain never saw the handshakes: counter broken?"
    for fam, result in results.items():
        ends = (f"client sent {client[f'out{fam}']}, server got {server[f'in{fam}']}, "
                f"answered {server[f'out{fam}']}, client got {client[f'in{fam}']}; "
                f"the client's own count: {result}")
        print(f"IPv{fam} UDP: {ends}")
        assert replies_after[f"in{fam}"] > replies[f"in{fam}"], (
            f"IPv{fam}: no UDP reply reached the client while its flows were offloaded; {ends}")
        assert server[f"in{fam}"] >= client[f"out{fam}"] * 0.9, f"IPv{fam} requests lost: {ends}"
        assert client[f"in{fam}"] >= server[f"out{fam}"] * 0.9, f"IPv{fam} replies lost: {ends}"
    # Thousands of TCP segments crossed the router in the window; the chain saw ~none.
    assert crossed > 1000, f"too little traffic to judge: {crossed} packets out of wan0"
    assert after - before <= 10, f"forward chain still saw {after - before} packets"
