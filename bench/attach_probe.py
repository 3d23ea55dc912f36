"""Runs inside the router namespace: times link creation → device in the flowtable.

Links are created with pyroute2 and the flowtable is read with libnftables
in this same process, so both ends of each sample are stamped by one clock
with millisecond resolution even under emulation. The flowtable is read again
whenever nf_tables announces a change (a netlink socket subscribed to the
NFNLGRP_NFTABLES group), not in a busy loop: polling libnftables every few
milliseconds under TCG ate the CPU the daemon needed and slowed what it
measured.

Each sample's link leaves the flowtable again before the next: deleted, or
with ``--detach rename`` renamed out of the config's patterns (``lanh<i>`` →
``xh<i>``, left for the caller to delete). On 7.3.4 every link deletion (any
link's: a route cache flush) tears down every idle IPv4 offloaded flow —
they come back at their next packets — so a case that measures attaches
beside offloaded flows renames.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from pyroute2 import IPRoute

from offloadd.kernel.nft import Nft
from tests.lab.ftwatch import nftables_events, wait_until

# What ``--detach rename`` renames sample i's link to (out of "lan*").
RENAMED = "xh{}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--table", default="offloadd")
    ap.add_argument("--flowtable", default="ft")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--detach", choices=("delete", "rename"), default="delete")
    a = ap.parse_args()
    nft = Nft()
    samples = []
    with IPRoute() as ipr, nftables_events() as events:
        for i in range(a.samples):
            name = f"lanh{i}"
            t0 = time.monotonic()
            ipr.link("add", ifname=name, kind="veth", peer=f"ph{i}")
            t1 = wait_until(nft, events, a.table, a.flowtable,
                            lambda d, n=name: n in d, timeout=30)  # type: ignore[misc]
            samples.append((t1 - t0) * 1000)
            if a.detach == "rename":
                ipr.link("set", index=ipr.link_lookup(ifname=name)[0], ifname=RENAMED.format(i))
            else:
                ipr.link("del", ifname=name)
            wait_until(nft, events, a.table, a.flowtable,
                       lambda d, n=name: n not in d, timeout=30)  # type: ignore[misc]
    json.dump({"attach_ms": samples}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
