"""Runs inside the router namespace: times link creation → device in the flowtable.

Links are created with pyroute2 and the flowtable is read with libnftables
in this same process, so both ends of each sample are stamped by one clock
with millisecond resolution even under emulation. The flowtable is read again
whenever nf_tables announces a change (a netlink socket subscribed to the
NFNLGRP_NFTABLES group), not in a busy loop: polling libnftables every few
milliseconds under TCG ate the CPU the daemon needed and slowed what it
measured.
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

from pyroute2 import IPRoute

from offloadd.kernel.nft import Nft


def _devices(nft: Nft, table: str, flowtable: str) -> set[str]:
    for item in nft.list_json(f"flowtable inet {table} {flowtable}"):
        ft = item.get("flowtable")
        if ft:
            dev = ft.get("dev", [])
            return {dev} if isinstance(dev, str) else set(dev)
    return set()


NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1


def nftables_events() -> socket.socket:
    """A socket that becomes readable whenever the namespace's nf_tables changes."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind((0, 0))
    s.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
    s.setblocking(False)
    return s


def _drain(s: socket.socket) -> None:
    with contextlib.suppress(BlockingIOError, OSError):
        while True:
            s.recv(65536)


def wait_until(nft: Nft, events: socket.socket, table: str, ft: str,
               pred: Callable[[set[str]], bool], *, timeout: float) -> float:
    """Monotonic time at which pred(flowtable devices) first held."""
    deadline = time.monotonic() + timeout
    while True:
        _drain(events)
        if pred(_devices(nft, table, ft)):
            return time.monotonic()
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"flowtable {ft} did not converge in {timeout}s")
        # Also re-read now and then: an overrun socket (ENOBUFS) must not hang us.
        select.select([events], [], [], min(left, 0.5))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--table", default="offloadd")
    ap.add_argument("--flowtable", default="ft")
    ap.add_argument("--samples", type=int, default=100)
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
            ipr.link("del", ifname=name)
            wait_until(nft, events, a.table, a.flowtable,
                       lambda d, n=name: n not in d, timeout=30)  # type: ignore[misc]
    json.dump({"attach_ms": samples}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
