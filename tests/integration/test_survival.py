"""Device changes do not disturb flows that are already offloaded.

Many UDP flows run offloaded through lan0/wan0 while unrelated matching
devices are added and removed again and again: every flow keeps its conntrack
entry, stays [OFFLOAD], and none of its packets goes back to the forward path
(a counter at the forward hook is the witness). As the contrast, rebuilding
the whole table in one transaction — what rebuild-on-every-event tools do —
sends every flow back through the forward path.
"""

from __future__ import annotations

from pathlib import Path

from tests.lab import conntrack
from tests.lab.daemon import offloadd
from tests.lab.nftns import rule_counter_packets
from tests.lab.topology import Lab
from tests.lab.traffic import SETTLE_S, udp_echo_server, udp_flows, wait_for

CONFIG = """
[[flowtable]]
name = "ft"
devices = ["lan*", "wan*"]
"""
FLOWS = 40
WITNESS = """
table inet witness {
    chain slowpath { type filter hook forward priority -300; policy accept; counter; }
}
"""


def _offloaded_ids(lab: Lab) -> set[int]:
    return {e.id for e in conntrack.entries(lab.router, 4)
            if e.proto == "udp" and e.dport == 7000 and e.offloaded}


def _slowpath(lab: Lab) -> int:
    return rule_counter_packets(lab.router, "inet", "witness", "slowpath")


def test_device_churn_keeps_flows_offloaded_rebuild_does_not(lab: Lab, tmp_path: Path) -> None:
    r = lab.router
    r.nft(WITNESS)
    base = {"lan0", "lan1", "wan0"}
    added = {f"lan9{i}" for i in range(10)}
    with offloadd(r, CONFIG, tmp_path) as d, udp_echo_server(lab.server, "0.0.0.0"):
        d.wait_devices("ft", base)
        flows = udp_flows(lab.client, lab.server_addr(4), flows=FLOWS, seconds=600,
                          interval=0.1)
        try:
            wait_for(lambda: len(_offloaded_ids(lab)) == FLOWS, SETTLE_S,
                     what=f"{FLOWS} offloaded udp flows")
            ids = _offloaded_ids(lab)

            # Devices joining: offloaded flows do not notice at all.
            before = _slowpath(lab)
            for name in sorted(added):
                r.run("ip", "link", "add", name, "type", "veth", "peer", "name", f"p{name}")
                d.wait_devices("ft", base | {n for n in added if n <= name})
            join_slow = _slowpath(lab) - before
            assert _offloaded_ids(lab) == ids, "a device joining disturbed an offloaded flow"
            assert join_slow <= 5, f"{join_slow} packets fell back to the forward path"

            # Devices leaving: the kernel flushes its route cache when a device
            # is unregistered, which sends each flow's next packet through the
            # forward path once (whoever manages the flowtable); the flows keep
            # their conntrack entries and are offloaded again.
            before = _slowpath(lab)
            for name in sorted(added):
                r.run("ip", "link", "del", name)
            d.wait_devices("ft", base)
            leave_slow = _slowpath(lab) - before
            wait_for(lambda: _offloaded_ids(lab) == ids, SETTLE_S,
                     what="the same conntrack entries offloaded after devices left")

            # The contrast: the same table rebuilt from scratch in one
            # transaction, as rebuild-on-every-event tools do.
            listing = r.out("nft", "list", "table", "inet", "offloadd")
            before = _slowpath(lab)
            r.nft("delete table inet offloadd\n" + listing)
            wait_for(lambda: len(_offloaded_ids(lab)) == FLOWS, SETTLE_S,
                     what="flows re-offloaded after the rebuild")
            rebuild_slow = _slowpath(lab) - before
            print(f"slow-path packets: {join_slow} for 10 joins, {leave_slow} for 10 leaves, "
                  f"{rebuild_slow} for 1 rebuild ({FLOWS} flows)")
            assert rebuild_slow >= FLOWS, (
                f"a rebuild sent only {rebuild_slow} packets back through the forward path")
        finally:
            flows.stop()
