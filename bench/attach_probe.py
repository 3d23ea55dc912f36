"""Runs inside the router namespace: times link creation → device in the flowtable.

Links are created with pyroute2 and the flowtable is polled with libnftables
in this same process, so both ends of each sample are stamped by one clock
with millisecond resolution even under emulation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from pyroute2 import IPRoute

from offloadd.nft import Nft


def _devices(nft: Nft, table: str, flowtable: str) -> set[str]:
    for item in nft.list_json(f"flowtable inet {table} {flowtable}"):
        ft = item.get("flowtable")
        if ft:
            dev = ft.get("dev", [])
            return {dev} if isinstance(dev, str) else set(dev)
    return set()


def _wait(nft: Nft, table: str, ft: str, pred: object, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred(_devices(nft, table, ft)):  # type: ignore[operator]
            return time.monotonic()
        time.sleep(0.002)
    raise TimeoutError(f"flowtable {ft} did not converge in {timeout}s")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--table", default="offloadd")
    ap.add_argument("--flowtable", default="ft")
    ap.add_argument("--samples", type=int, default=100)
    a = ap.parse_args()
    nft = Nft()
    samples = []
    with IPRoute() as ipr:
        for i in range(a.samples):
            name = f"lanh{i}"
            t0 = time.monotonic()
            ipr.link("add", ifname=name, kind="veth", peer=f"ph{i}")
            t1 = _wait(nft, a.table, a.flowtable, lambda d, n=name: n in d, 30)
            samples.append((t1 - t0) * 1000)
            ipr.link("del", ifname=name)
            _wait(nft, a.table, a.flowtable, lambda d, n=name: n not in d, 30)
    json.dump({"attach_ms": samples}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
