"""Stack case: a bridged LAN and a VLAN uplink, upper devices vs stack-aware.

The lab router restacked (tests/lab/stacked.py: lan0 under br-lan, the server
behind wan0.7) and measured with each flowtable list, back to back and in
rotating order per round:

* slow: offloadd not running (every packet crosses bridge, VLAN and forward path);
* as-listed: offloadd with the L3 devices (br-lan, wan0.7) in the flowtable;
* lower: stack = "lower" (lan0, wan0: the fast path skips the bridge and VLAN);
* both: stack = "both".

TCP: one iperf3 stream, receiver-side throughput (first second omitted). UDP:
iperf3 ``-u -l 64 -b 0`` over 4 flows, packets the receiver got per second.
Beside them, per mode, the packets that still reached the forward hook and
the upper devices' ingress per UDP flow ("slow-path packets per flow").
Only ratios from one run mean anything: the VM is emulated (TCG).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.common import median_of, modes_in_rotation
from tests.lab import conntrack
from tests.lab.stacked import LOWER, UPPER, restack, server_addr, witnesses
from tests.lab.topology import Lab, lab_topology
from tests.lab.traffic import iperf3_server

CONFIG = """
[[flowtable]]
name = "ft"
devices = ["br-lan", "wan0.7"]
stack = "{stack}"
"""
MODES = ("slow", "as-listed", "lower", "both")
ROUNDS = 2
SECONDS = 5
UDP_STREAMS = 4
PORT = 5201


def _iperf(lab: Lab, *args: str) -> dict[str, Any]:
    proc = lab.client.run("iperf3", "-c", server_addr(4), "-p", str(PORT), "-t",
                          str(SECONDS), "-J", *args, timeout=SECONDS + 60)
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def _measure(lab: Lab, mode: str) -> dict[str, Any]:
    tcp = _iperf(lab, "-O", "1")
    gbit = tcp["end"]["sum_received"]["bits_per_second"] / 1e9
    before = witnesses(lab.router)
    udp = _iperf(lab, "-u", "-l", "64", "-b", "0", "-P", str(UDP_STREAMS))
    after = witnesses(lab.router)
    recv = udp["end"]["sum_received"]
    got = recv["packets"] - recv["lost_packets"]
    offloaded = sum(1 for e in conntrack.entries(lab.router, 4)
                    if e.offloaded and e.dport == PORT and e.proto == "udp")
    slow = {k: (after[k] - before.get(k, 0)) / UDP_STREAMS for k in after}
    return {"mode": mode, "tcp_gbit": round(gbit, 3), "udp_pps": round(got / recv["seconds"]),
            "udp_flows_offloaded": offloaded,
            "forward_packets_per_flow": round(slow["forward"]),
            "br_lan_ingress_per_flow": round(slow["br"]),
            "vlan_ingress_per_flow": round(slow["vlan"])}


def run(workdir: Path, rounds: int = ROUNDS) -> dict[str, Any]:
    with lab_topology() as lab:
        restack(lab)
        with iperf3_server(lab.server, PORT):
            samples = modes_in_rotation(
                lab.router, workdir, modes=MODES, rounds=rounds, flowtable="ft", config=CONFIG,
                want={"as-listed": UPPER, "lower": LOWER, "both": LOWER | UPPER},
                measure=lambda mode: _measure(lab, mode), label="stack")

    def med(mode: str, key: str) -> float:
        return median_of(samples, mode, key)

    res: dict[str, Any] = {"case": "stack", "samples": samples, "rounds": rounds}
    for mode in MODES:
        for key in ("tcp_gbit", "udp_pps", "forward_packets_per_flow",
                    "br_lan_ingress_per_flow", "vlan_ingress_per_flow"):
            res[f"{key}_{mode.replace('-', '_')}"] = med(mode, key)
        res[f"udp_flows_offloaded_{mode.replace('-', '_')}"] = min(
            s["udp_flows_offloaded"] for s in samples if s["mode"] == mode)
    for mode in ("as-listed", "lower", "both"):
        m = mode.replace("-", "_")
        res[f"tcp_ratio_{m}_vs_slow"] = round(res[f"tcp_gbit_{m}"] / res["tcp_gbit_slow"], 2)
        res[f"udp_pps_ratio_{m}_vs_slow"] = round(res[f"udp_pps_{m}"] / res["udp_pps_slow"], 2)
    # The target: stack-aware >= the L3 list on every path.
    res["tcp_ratio_lower_vs_as_listed"] = round(
        res["tcp_gbit_lower"] / max(res["tcp_gbit_as_listed"], 1e-9), 2)
    res["udp_pps_ratio_lower_vs_as_listed"] = round(
        res["udp_pps_lower"] / max(res["udp_pps_as_listed"], 1), 2)
    if res["udp_flows_offloaded_lower"] < UDP_STREAMS:
        res["error"] = (f"stack = lower offloaded {res['udp_flows_offloaded_lower']} of "
                        f"{UDP_STREAMS} UDP flows")
    return res
