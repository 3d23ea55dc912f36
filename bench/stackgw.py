"""stack_pppoe: PPPoE over a VLAN and a bridge port on the gateway lab.

Not among the default cases (about 10 minutes). The lab's ISP end runs the
kernel's PPPoE (tests.lab.gateway, kernel_isp): its user-space pppoe used to
cap what was measured. The iperf3 server is bound to the server's address:
the ISP's namespace has two (203.0.113.1 and its ppp address), and unbound,
its UDP handshake replies left from the ppp address, which the client's
connected socket dropped ("unable to read from stream socket"). Should
iperf3's UDP fail all the same, a sample keeps its TCP figures and the error.

The gateway lab (tests/lab/gateway.py: a LAN host on br-lan's port lan0, a
real pppd session ppp0 over eth1.7 over eth1 to a pppoe-server) with iperf3
between the LAN host and the ISP's server (203.0.113.1, behind the PPPoE
session), each mode back to back and in rotating order per round:

* slow: offloadd not running;
* as-listed: offloadd with the L3 devices (br-lan, ppp0, wg0);
* lower: stack = "lower" (lan0, eth1, wg0: the fast path skips bridge, VLAN
  and PPPoE, the kernel doing the encapsulation itself).

Both directions, as firewall4's measurements did (openwrt/firewall4 PR #102:
PPPoE-over-VLAN reverse throughput): upload (LAN host -> ISP, the bridge's
ingress is the upper device a packet skips) and download (``-R``, ppp0's
ingress). TCP: one stream, receiver-side throughput (first second omitted);
UDP: 64-byte datagrams over 4 flows, packets received per second. Slow-path
packets per UDP flow: what still reached the forward hook and each upper
device's ingress. Only ratios from one run mean anything (TCG).
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

from bench.common import daemon, median_of, modes_in_rotation
from tests.lab import conntrack
from tests.lab.daemon import RunningDaemon
from tests.lab.gateway import (
    Gateway,
    gateway_lab,
    offloaded_per_path,
    reconnect_pppoe,
    watch_attach,
)
from tests.lab.nftns import counters
from tests.lab.traffic import iperf3_server, udp_echo_server, udp_flows, wait_for

CONFIG = """
[[flowtable]]
name = "gw"
devices = ["br-lan", "ppp0", "wg0"]
stack = "{stack}"
"""
WANT = {"as-listed": frozenset({"br-lan", "ppp0", "wg0"}),
        "lower": frozenset({"lan0", "eth1", "wg0"})}
MODES = ("slow", "as-listed", "lower")
ROUNDS = 2
SECONDS = 5
UDP_STREAMS = 4
# Unpaced, as the stack case: each stream as fast as it can.
UDP_RATE = "0"
PORT = 5201
EVENT_PORT = 7000  # the echo servers of the flush and reconnect part
SERVER = "203.0.113.1"  # the ISP's server, behind the PPPoE session


def _witnesses(g: Gateway) -> None:
    """UDP iperf3 packets at the gateway's forward hook (either direction)
    and at br-lan's and ppp0's ingress (hooked before the flowtable)."""
    g.gw.run("nft", "delete", "table", "inet", "benchw", check=False)
    g.gw.run("nft", "delete", "table", "netdev", "benchw", check=False)
    g.gw.nft("table inet benchw {\ncounter slowpath {}\n"
             "chain forward { type filter hook forward priority -10; policy accept;\n"
             f"ip daddr {SERVER} udp dport {PORT} counter name slowpath\n"
             f"ip saddr {SERVER} udp sport {PORT} counter name slowpath\n}}\n}}\n")
    g.gw.nft("table netdev benchw {\ncounter in_br {}\ncounter in_ppp {}\n"
             "chain br { type filter hook ingress device \"br-lan\" priority -500; "
             f"policy accept;\nip daddr {SERVER} udp dport {PORT} counter name in_br\n}}\n"
             "chain ppp { type filter hook ingress device \"ppp0\" priority -500; "
             f"policy accept;\nip saddr {SERVER} udp sport {PORT} counter name in_ppp\n}}\n}}\n")


def _iperf(g: Gateway, *args: str) -> dict[str, Any]:
    proc = g.lan.run("iperf3", "-c", SERVER, "-p", str(PORT), "-t", str(SECONDS), "-J", *args,
                     timeout=SECONDS + 90, check=False)
    try:
        out: dict[str, Any] = json.loads(proc.stdout)
    except ValueError:
        out = {}
    if proc.returncode != 0 or "error" in out:
        raise AssertionError(f"iperf3 {' '.join(args)} to {SERVER}: exit {proc.returncode}: "
                             f"{out.get('error') or proc.stderr.strip() or proc.stdout[-500:]}")
    return out


def _measure(g: Gateway, mode: str) -> dict[str, Any]:
    sample: dict[str, Any] = {"mode": mode}
    for way, extra in (("up", ()), ("down", ("-R",))):
        tcp = _iperf(g, "-O", "1", *extra)
        sample[f"tcp_gbit_{way}"] = round(tcp["end"]["sum_received"]["bits_per_second"] / 1e9, 3)
        before = counters(g.gw)
        try:
            udp = _iperf(g, "-u", "-l", "64", "-b", UDP_RATE, "-P", str(UDP_STREAMS), *extra)
        except AssertionError as e:
            # Kept apart: the TCP figures stand without it (below).
            sample[f"udp_error_{way}"] = str(e)
            continue
        after = counters(g.gw)
        recv = udp["end"].get("sum_received") or udp["end"]["sum"]
        got = recv["packets"] - recv["lost_packets"]
        sample[f"udp_pps_{way}"] = round(got / recv["seconds"])
        # This run's flows only (their client ports): the previous run's
        # entries are still in conntrack, offloaded, for up to 30 s.
        ports = {c["local_port"] for c in udp["start"]["connected"]}
        sample[f"udp_flows_offloaded_{way}"] = sum(
            1 for e in conntrack.entries(g.gw, 4)
            if e.offloaded and e.proto == "udp" and e.dport == PORT and e.sport in ports)
        slow = {k: (after[k] - before.get(k, 0)) / UDP_STREAMS for k in after}
        sample[f"forward_packets_per_flow_{way}"] = round(slow.get("slowpath", 0))
        sample[f"upper_ingress_per_flow_{way}"] = round(
            slow.get("in_br" if way == "up" else "in_ppp", 0))
    return sample


def run_alone(workdir: Path) -> dict[str, Any]:
    """``make bench CASES=stack_pppoe``."""
    return {"case": "stack_pppoe", **run(workdir)}


def _in_sync(d: RunningDaemon) -> bool:
    st = d.status()
    return bool(st["table"]["exists"]) and all(ft["in_sync"] for ft in st["flowtables"])


def _ppp_stack(d: RunningDaemon, ppp: str) -> bool:
    return any(s["device"] == ppp and s["paths"] and s["paths"][0].endswith("eth1")
               for s in d.status()["stacks"])


def _events(g: Gateway, workdir: Path) -> dict[str, float]:
    """With stack = "lower" and 2 UDP flows per path (10 datagrams a second):
    an admin's ``nft -f`` of a file starting with ``flush ruleset``, then a
    PPPoE reconnect. Seconds until offloadd's table was back and in sync
    (its control socket's status, which reads the kernel: ~0.1 s a look),
    and until every flow was offloaded again (conntrack-tools, ~0.5 s a look);
    for the reconnect, from the new ppp0 with its addresses to its stack
    (ppp0 -> eth1.7 -> eth1) resolved and the flowtable in sync."""
    out: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        for p in g.paths:
            stack.enter_context(udp_echo_server(p.server, p.server_addr, EVENT_PORT))
        d, _start = stack.enter_context(daemon(g.gw, CONFIG.format(stack="lower"), workdir))
        wait_for(lambda: d.flowtable_devices("gw") == WANT["lower"], 60, interval=0.3,
                 what="the lower devices in flowtable gw")
        gens = [udp_flows(g.lan, p.server_addr, port=EVENT_PORT, flows=2, seconds=600,
                          interval=0.1) for p in g.paths]
        try:
            def all_offloaded() -> bool:
                return all(n == 2 for n in offloaded_per_path(g, EVENT_PORT).values())

            wait_for(all_offloaded, 120, interval=0.5, what="every path's flows offloaded")
            t0 = time.monotonic()
            g.gw.nft("flush ruleset\n")
            wait_for(lambda: _in_sync(d), 60, interval=0.05, what="the table back")
            out["flush_table_back_s"] = round(time.monotonic() - t0, 2)
            wait_for(all_offloaded, 60, interval=0.2, what="flows offloaded after the flush")
            out["flush_flows_offloaded_s"] = round(time.monotonic() - t0, 2)
            with watch_attach(g.gw, "gw", g.ppp, WANT["lower"]) as watched:
                up = reconnect_pppoe(g)
                w = watched()
            if w["attach_ms"] is None:
                raise AssertionError(f"ppp0's stack never reached flowtable gw: {w}")
            wait_for(lambda: _ppp_stack(d, g.ppp) and _in_sync(d), 60, interval=0.05,
                     what="ppp0's stack resolved after the reconnect")
            # From the new ppp0's arrival to its stack in the flowtable, both
            # stamped in the gateway's namespace as they happened.
            out["reconnect_stack_attached_s"] = round(w["attach_ms"] / 1000, 3)
            out["reconnect_flowtable_timeline"] = [
                [round(t - w["appeared"], 3), m] for t, m in w["timeline"]]
            wait_for(all_offloaded, 120, interval=0.2, what="flows offloaded after the reconnect")
            out["reconnect_flows_offloaded_s"] = round(time.monotonic() - up, 2)
        finally:
            for gen in gens:
                gen.stop()
    return out


def run(workdir: Path, rounds: int = ROUNDS) -> dict[str, Any]:
    with gateway_lab(kernel_isp=True) as g:
        with iperf3_server(g.isp, PORT, bind=SERVER):
            _witnesses(g)
            samples = modes_in_rotation(
                g.gw, workdir, modes=MODES, rounds=rounds, flowtable="gw", config=CONFIG,
                want=WANT, measure=lambda mode: _measure(g, mode), label="stack pppoe")
        events = _events(g, workdir)

    def med(mode: str, key: str) -> float:
        return median_of(samples, mode, key)

    res: dict[str, Any] = {"samples": samples, **events}
    # A UDP run iperf3 could not set up leaves the UDP figures out (its
    # error is in the samples), never the TCP ones.
    udp_ok = {way: all(f"udp_pps_{way}" in s for s in samples) for way in ("up", "down")}
    for mode in MODES:
        m = mode.replace("-", "_")
        for way in ("up", "down"):
            keys = ["tcp_gbit"] + (["udp_pps", "forward_packets_per_flow",
                                    "upper_ingress_per_flow"] if udp_ok[way] else [])
            for key in keys:
                res[f"{key}_{way}_{m}"] = med(mode, f"{key}_{way}")
            if udp_ok[way]:
                res[f"udp_flows_offloaded_{way}_{m}"] = min(
                    s[f"udp_flows_offloaded_{way}"] for s in samples if s["mode"] == mode)
    for way in ("up", "down"):
        for key in ("tcp_gbit", "udp_pps") if udp_ok[way] else ("tcp_gbit",):
            short = "tcp" if key == "tcp_gbit" else "udp_pps"
            for mode in ("as_listed", "lower"):
                res[f"{short}_ratio_{way}_{mode}_vs_slow"] = round(
                    res[f"{key}_{way}_{mode}"] / max(res[f"{key}_{way}_slow"], 1e-9), 2)
            res[f"{short}_ratio_{way}_lower_vs_as_listed"] = round(
                res[f"{key}_{way}_lower"] / max(res[f"{key}_{way}_as_listed"], 1e-9), 2)
    return res
