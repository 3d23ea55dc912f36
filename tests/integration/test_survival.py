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
from tests.lab.traffic import udp_echo_server, udp_flows, wait_for

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
    with offloadd(r, CONFIG, tmp_path) as d, udp_echo_server(lab.server, "0.0.0.0"):
        d.wait_devices("ft", base)
        flows = udp_flows(lab.client, lab.server_addr(4), flows=FLOWS, seconds=90,
                          interval=0.1)
        try:
            wait_for(lambda: len(_offloaded_ids(lab)) == FLOWS, 20,
                     what=f"{FLOWS} offloaded udp flows")
            ids = _offloaded_ids(lab)
            before = _slowpath(lab)
            for i in range(10):
                r.run("ip", "link", "add", f"lan9{i}", "type", "veth", "peer", "name", f"p9{i}")
                d.wait_devices("ft", base | {f"lan9{i}"})
                r.run("ip", "link", "del", f"lan9{i}")
                d.wait_devices("ft", base)
            churn_slow = _slowpath(lab) - before
            assert _offloaded_ids(lab) == ids, "an offloaded flow was disturbed by device churn"
            assert churn_slow <= 5, f"{churn_slow} packets fell back to the forward path"

            # The contrast: the same table rebuilt from scratch in one transaction.
            listing = r.out("nft", "list", "table", "inet", "offloadd")
            before = _slowpath(lab)
            r.nft("delete table inet offloadd\n" + listing)
            wait_for(lambda: len(_offloaded_ids(lab)) == FLOWS, 20,
                     what="flows re-offloaded after the rebuild")
            rebuild_slow = _slowpath(lab) - before
            assert rebuild_slow >= FLOWS, (
                f"a rebuild sent only {rebuild_slow} packets back through the forward path")
        finally:
            flows.stop()
