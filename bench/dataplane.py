"""Dataplane case: forwarding through the router, slow path vs offloadd's flowtable.

The router's forward hook holds an admin table with 400 rules that match
nothing (the realistic case: every packet on the slow path walks them all).
Each round measures, back to back and in alternating order:

* slow path: offloadd not running (no flowtable, every packet walks the chain);
* offloaded: offloadd running with a flowtable over lan*/wan*;
* bare: no admin rules and no flowtable (the lab's ceiling: what the emulated
  endpoints and veth can carry at all). Offloaded close to bare means the
  flowtable removed the ruleset's cost; what is left is not the router's.

TCP: one iperf3 stream, receiver-side throughput (first second omitted).
UDP: iperf3 ``-u -l 64 -b 0`` over 4 flows; the packet rate is what the
receiver got (iperf3's received packets = sent - lost, over the test's
duration). iperf3's UDP handshake gets a reply from the server on each
stream's 5-tuple, so conntrack sees the flow ESTABLISHED and it is offloaded
from the first data packets on. The router's own egress counter (wan0
tx_packets) is recorded too, as a second view of the forwarded rate.
Only ratios from one run mean anything: the VM is emulated (TCG).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.common import daemon
from tests.lab import conntrack
from tests.lab.netns import Netns
from tests.lab.topology import Lab, lab_topology
from tests.lab.traffic import iperf3_server

CONFIG = """
[[flowtable]]
name = "ft"
devices = ["lan*", "wan*"]
"""
RULES = 400
ROUNDS = 3
SECONDS = 5
UDP_STREAMS = 4
PORT = 5201


def admin_ruleset(rules: int = RULES) -> str:
    """A forward chain of `rules` rules that never match the lab's traffic."""
    lines = []
    for i in range(rules):
        net = f"10.{i // 200}.{i % 200}.0/24"
        match i % 4:
            case 0:
                lines.append(f"ip saddr {net} tcp dport {1000 + i} drop")
            case 1:
                lines.append(f"ip daddr {net} udp dport {2000 + i} drop")
            case 2:
                lines.append(f'iifname "adm{i}" ip saddr {net} accept')
            case _:
                lines.append(f"ip saddr {net} ct state new counter drop")
    body = "\n        ".join(lines)
    return f"""
table inet admin {{
    chain forward {{
        type filter hook forward priority 0; policy accept;
        {body}
    }}
}}
"""


def _iperf(lab: Lab, *args: str) -> dict[str, Any]:
    proc = lab.client.run("iperf3", "-c", lab.wan.host_v4, "-p", str(PORT), "-t",
                          str(SECONDS), "-J", *args, timeout=SECONDS + 60)
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def _tx_packets(ns: Netns, dev: str) -> int:
    out = subprocess.run(["ip", "-n", ns.name, "-s", "-j", "link", "show", dev],
                         capture_output=True, text=True, check=True).stdout
    return int(json.loads(out)[0]["stats64"]["tx"]["packets"])


def _measure(lab: Lab, mode: str) -> dict[str, Any]:
    tcp = _iperf(lab, "-O", "1")
    gbit = tcp["end"]["sum_received"]["bits_per_second"] / 1e9
    tx0, t0 = _tx_packets(lab.router, "wan0"), time.monotonic()
    udp = _iperf(lab, "-u", "-l", "64", "-b", "0", "-P", str(UDP_STREAMS))
    router_pps = (_tx_packets(lab.router, "wan0") - tx0) / (time.monotonic() - t0)
    recv = udp["end"]["sum_received"]
    got = recv["packets"] - recv["lost_packets"]
    offloaded = sum(1 for e in conntrack.entries(lab.router, 4)
                    if e.offloaded and e.dport == PORT and e.proto == "udp")
    return {"mode": mode, "tcp_gbit": round(gbit, 3),
            "udp_pps": round(got / recv["seconds"]), "udp_sent_pps":
            round(udp["end"]["sum_sent"]["packets"] / udp["end"]["sum_sent"]["seconds"]),
            "router_tx_pps": round(router_pps), "udp_flows_offloaded": offloaded}


def run(workdir: Path, rounds: int = ROUNDS) -> dict[str, Any]:
    samples: list[dict[str, Any]] = []
    with lab_topology() as lab, iperf3_server(lab.server, PORT):
        lab.router.nft(admin_ruleset())
        modes = ("slow", "offload", "bare")
        for r in range(rounds):
            order = modes[r % 3:] + modes[:r % 3]
            for mode in order:
                if mode == "slow":
                    sample = _measure(lab, mode)
                elif mode == "bare":
                    lab.router.nft("delete table inet admin")
                    sample = _measure(lab, mode)
                    lab.router.nft(admin_ruleset())
                else:
                    with daemon(lab.router, CONFIG, workdir) as (d, ready_s):
                        d.wait_devices("ft", {"lan0", "lan1", "wan0"})
                        sample = _measure(lab, mode)
                        sample["daemon_ready_s"] = round(ready_s, 1)
                sample["round"] = r
                samples.append(sample)
                print(f"  dataplane round {r} {mode}: {json.dumps(sample)}", flush=True)
    slow = [s for s in samples if s["mode"] == "slow"]
    off = [s for s in samples if s["mode"] == "offload"]
    bare = [s for s in samples if s["mode"] == "bare"]

    def med(rows: list[dict[str, Any]], key: str) -> float:
        return float(statistics.median(s[key] for s in rows))

    res: dict[str, Any] = {
        "case": "dataplane",
        "samples": samples,
        "forward_rules": RULES,
        "rounds": rounds,
        "tcp_gbit_slow": med(slow, "tcp_gbit"),
        "tcp_gbit_offload": med(off, "tcp_gbit"),
        "udp_pps_slow": med(slow, "udp_pps"),
        "udp_pps_offload": med(off, "udp_pps"),
        "tcp_gbit_bare": med(bare, "tcp_gbit"),
        "udp_pps_bare": med(bare, "udp_pps"),
        "router_pps_slow": med(slow, "router_tx_pps"),
        "router_pps_offload": med(off, "router_tx_pps"),
        # offloadd's start-up next to a 400-rule foreign table (TCG).
        "daemon_ready_s_max": max(s["daemon_ready_s"] for s in off),
    }
    res["tcp_ratio"] = round(res["tcp_gbit_offload"] / res["tcp_gbit_slow"], 2)
    res["udp_pps_ratio"] = round(res["udp_pps_offload"] / res["udp_pps_slow"], 2)
    res["router_pps_ratio"] = round(res["router_pps_offload"] / res["router_pps_slow"], 2)
    res["tcp_offload_vs_bare"] = round(res["tcp_gbit_offload"] / res["tcp_gbit_bare"], 2)
    res["udp_pps_offload_vs_bare"] = round(res["udp_pps_offload"] / res["udp_pps_bare"], 2)
    bad = [s for s in off if s["udp_flows_offloaded"] < UDP_STREAMS]
    if bad or any(s["udp_flows_offloaded"] for s in slow + bare):
        res["error"] = ("offload state not as expected: offloaded UDP flows per sample "
                        f"{[(s['mode'], s['udp_flows_offloaded']) for s in samples]}")
    return res
