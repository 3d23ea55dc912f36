"""Runs inside a namespace: stamps when a device appears and when a flowtable holds what it should.

Why its own process in the namespace: the lab's listings cost up to a second
each in the emulated VM, far coarser than the 250-ms attach target. Here the
link's arrival (an rtnetlink event) and each read of the flowtable (after an
nf_tables event) are stamped by one clock (CLOCK_MONOTONIC, the VM's, shared
with the test process), so "the new ppp0 appeared → its stack was in the
flowtable" is measured to a few milliseconds while the reconnect runs.

``python -m tests.lab.ftwatch --flowtable gw --device ppp0 --want lan0,eth1,wg0``
prints ``ready`` once subscribed, then one JSON line: when the device (with
an ifindex other than the one it had at the start) appeared, when the
flowtable first held ``want`` after that, and every change of the flowtable's
device list it saw, each with its monotonic time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import select
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from pyroute2 import IPRoute

from offloadd.kernel.nft import Nft

NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
RTMGRP_LINK = 1


def flowtable_devices(nft: Nft, table: str, flowtable: str) -> set[str]:
    for item in nft.list_json(f"flowtable inet {table} {flowtable}"):
        ft = item.get("flowtable")
        if ft:
            dev = ft.get("dev", [])
            return {dev} if isinstance(dev, str) else set(dev)
    return set()


def nftables_events() -> socket.socket:
    """A socket that becomes readable whenever the namespace's nf_tables changes."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind((0, 0))
    s.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
    s.setblocking(False)
    return s


def drain(s: socket.socket) -> None:
    with contextlib.suppress(BlockingIOError, OSError):
        while True:
            s.recv(65536)


def wait_until(nft: Nft, events: socket.socket, table: str, ft: str,
               pred: Callable[[set[str]], bool], *, timeout: float) -> float:
    """Monotonic time at which pred(flowtable devices) first held."""
    deadline = time.monotonic() + timeout
    while True:
        drain(events)
        if pred(flowtable_devices(nft, table, ft)):
            return time.monotonic()
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"flowtable {ft} did not converge in {timeout}s")
        # Also re-read now and then: an overrun socket (ENOBUFS) must not hang us.
        select.select([events], [], [], min(left, 0.5))


def _new_index(ipr: IPRoute, device: str, old: int | None) -> bool:
    """Whether the queued link messages announce ``device`` with a new ifindex."""
    for msg in ipr.get():
        if (msg.get("event") == "RTM_NEWLINK" and msg.get_attr("IFLA_IFNAME") == device
                and msg["index"] != old):
            return True
    return False


def watch(table: str, flowtable: str, device: str, want: set[str],
          timeout: float) -> dict[str, Any]:
    nft = Nft()
    timeline: list[tuple[float, list[str]]] = []
    with IPRoute() as ipr, nftables_events() as events:
        ipr.bind(groups=RTMGRP_LINK)
        found = ipr.link_lookup(ifname=device)
        old = found[0] if found else None

        def read() -> set[str]:
            devs = flowtable_devices(nft, table, flowtable)
            if not timeline or set(timeline[-1][1]) != devs:
                timeline.append((time.monotonic(), sorted(devs)))
            return devs

        read()
        print("ready", flush=True)
        appeared: float | None = None
        attached: float | None = None
        deadline = time.monotonic() + timeout
        while attached is None and time.monotonic() < deadline:
            ready, _, _ = select.select([ipr, events], [], [], 0.5)
            if ipr in ready and appeared is None and _new_index(ipr, device, old):
                appeared = time.monotonic()
            elif ipr in ready:
                ipr.get()
            drain(events)
            devs = read()
            if appeared is not None and want <= devs:
                attached = timeline[-1][0] if want <= set(timeline[-1][1]) else time.monotonic()
                # Held since before the device appeared: attached as it appeared.
                attached = max(attached, appeared)
    return {"appeared": appeared, "attached": attached,
            "attach_ms": (None if appeared is None or attached is None
                          else round((attached - appeared) * 1000, 1)),
            "timeline": timeline}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--table", default="offloadd")
    ap.add_argument("--flowtable", required=True)
    ap.add_argument("--device", required=True)
    ap.add_argument("--want", required=True, help="comma-separated devices")
    ap.add_argument("--timeout", type=float, default=180)
    a = ap.parse_args()
    res = watch(a.table, a.flowtable, a.device, set(a.want.split(",")), a.timeout)
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
