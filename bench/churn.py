"""churn: a blocklist that hooks input only, one element a second for 60 s.

Issue 21: a bouncer (crowdsec, fail2ban) adds an element to a set of a table
whose chains hook input only, every second or so, all day. No forwarded
packet can meet that table, so none of it may cost offloaded flows a
re-validation (each is a flowtable replacement: every flow's next packet
through the forward path). In the lab router, 20 UDP flows (10 IPv4, 10
IPv6) run offloaded through offloadd, one datagram per flow every 0.1 s, while
``lab/blocklist.py`` adds 60 elements, one transaction a second. Figures:

* ``revalidations``: re-validations during the churn (must be 0);
* ``skipped_changes``: policy changes offloadd saw and skipped (must be 60);
* ``flows_kept_ratio``: flows offloaded after the churn under the conntrack
  entry they had before it;
* ``forward_packets_per_flow``: what the flows sent through an admin's
  forward chain during the churn (0: never on the slow path);
* ``daemon_cpu_s_per_change``: offloadd's CPU per element (parsing the events).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tests.lab import conntrack
from tests.lab.daemon import offloadd
from tests.lab.nftns import counters
from tests.lab.topology import Lab, lab_topology
from tests.lab.traffic import probe, udp_echo_server, wait_for

CONFIG = """
[[flowtable]]
name = "ft"
devices = ["lan*", "wan*"]
"""
PORT = 7000
FLOWS = 10  # per family
CHANGES = 60  # elements, one transaction a second
BOUNCER = """
table inet bouncer {
    set blocklist { type ipv4_addr; }
    chain input { type filter hook input priority -10; policy accept;
                  ip saddr @blocklist drop; }
}
table inet admin {
    counter slowpath { }
    chain forward { type filter hook forward priority 0; policy accept;
                    udp dport 7000 counter name slowpath
                    udp sport 7000 counter name slowpath; }
}
"""
BLOCKLIST = str(Path(__file__).parents[1] / "tests" / "lab" / "blocklist.py")


def _entries(lab: Lab) -> dict[int, bool]:
    return {e.id: e.offloaded for fam in (4, 6) for e in conntrack.entries(lab.router, fam)
            if e.proto == "udp" and e.dport == PORT}


def run(workdir: Path) -> dict[str, Any]:
    with lab_topology() as lab:
        r = lab.router
        r.nft(BOUNCER)
        with offloadd(r, CONFIG, workdir) as d, udp_echo_server(lab.server, "::", PORT):
            d.wait_devices("ft", {"lan0", "lan1", "wan0"})
            gens = [probe(lab.client, "udp", lab.server_addr(fam), PORT, flows=FLOWS,
                          seconds=600) for fam in (4, 6)]
            try:
                wait_for(lambda: sum(_entries(lab).values()) == 2 * FLOWS, 120, interval=1,
                         what=f"{2 * FLOWS} offloaded flows")
                before = _entries(lab)
                rv0 = d.status()["revalidate"]
                slow0 = counters(r).get("slowpath", 0)
                cpu0 = d.cpu_seconds()
                churn_s = float(r.out(sys.executable, BLOCKLIST, "--table", "bouncer",
                                      "--set", "blocklist", "--transactions", str(CHANGES),
                                      "--per", "1", "--seconds", str(CHANGES), timeout=600))
                wait_for(lambda: d.status()["revalidate"]["policy_changes_skipped_total"]
                         >= rv0["policy_changes_skipped_total"] + CHANGES, 120, interval=0.5,
                         what=f"{CHANGES} skipped changes")
                cpu = d.cpu_seconds() - cpu0
                slow = counters(r).get("slowpath", 0) - slow0
                rv1 = d.status()["revalidate"]
                after = _entries(lab)
            finally:
                for g in gens:
                    g.stop()
    kept = sum(1 for i, off in after.items() if off and i in before)
    return {
        "changes": CHANGES, "churn_s": round(churn_s, 1), "flows": 2 * FLOWS,
        "revalidations": rv1["revalidations_total"] - rv0["revalidations_total"],
        "skipped_changes": (rv1["policy_changes_skipped_total"]
                            - rv0["policy_changes_skipped_total"]),
        "policy_changes": rv1["policy_changes_total"] - rv0["policy_changes_total"],
        "flows_kept_ratio": round(kept / len(before), 3) if before else 0.0,
        "forward_packets_per_flow": round(slow / (2 * FLOWS), 2),
        "daemon_cpu_s_per_change": round(cpu / CHANGES, 4),
    }
