"""By hand, as root: µs per link message, offloadd's raw parser vs pyroute2's.

Why by hand: a timing is no test assertion (machines differ, emulation is
~50x slower); this shows the ratio the link watcher's default socket rests
on. It creates a namespace with 500 veth pairs, dumps their 1000 real
RTM_NEWLINK messages as datagrams, and parses the same bytes both ways:
``python -m bench.rtnl_parse`` (or ``--inside`` in a namespace of your own).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from offloadd.kernel import rtnl

PAIRS = 500


def _datagrams() -> list[bytes]:
    sock = rtnl.open_rtnetlink()
    sock.setblocking(True)
    try:
        sock.send(rtnl.getlink_dump_request(1))
        out = []
        while True:
            data = sock.recv(1 << 16)
            out.append(data)
            if any(m["header"]["type"] == rtnl.NLMSG_DONE for m in rtnl.parse_messages(data)):
                return out
    finally:
        sock.close()


def _best(fn: Callable[[], None], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(rounds: int) -> None:
    from pyroute2.netlink.rtnl.marshal import MarshalRtnl  # noqa: PLC0415

    datagrams = _datagrams()
    msgs = [m for d in datagrams for m in rtnl.parse_messages(d)
            if m["header"]["type"] == rtnl.RTM_NEWLINK and m.get("IFLA_IFNAME", "") != "lo"]
    n = len(msgs)
    marshal = MarshalRtnl()

    def raw() -> None:
        for d in datagrams:
            rtnl.parse_messages(d)

    def pyroute2() -> None:
        for d in datagrams:
            for m in marshal.parse(d):
                m.get("IFLA_IFNAME")  # decoding is lazy in places; touch what the watcher reads

    t_raw = _best(raw, rounds)
    t_py = _best(pyroute2, max(1, rounds // 5))
    size = sum(len(d) for d in datagrams)
    print(f"{n} NEWLINK messages (veth) in {len(datagrams)} datagrams, {size} bytes")
    print(f"raw parser: {t_raw / n * 1e6:8.1f} µs/message")
    print(f"pyroute2:   {t_py / n * 1e6:8.1f} µs/message  ({t_py / t_raw:.0f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inside", action="store_true", help="measure in this namespace as it is")
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    if args.inside:
        measure(args.rounds)
        return
    ns = f"rtnlbench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        batch = "".join(f"link add a{i} type veth peer name b{i}\n" for i in range(PAIRS))
        subprocess.run(["ip", "-n", ns, "-batch", "-"], input=batch, text=True, check=True)
        repo = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": repo}
        subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "bench.rtnl_parse",
                        "--inside", "--rounds", str(args.rounds)], check=True, cwd=repo, env=env)
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)


if __name__ == "__main__":
    main()
