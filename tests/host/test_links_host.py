"""The link watcher against the real kernel of this machine, as root.

Why: the watcher's correctness rests on kernel behaviour no fake can vouch
for (message order, AF_BRIDGE port messages, netns moves, ENOBUFS). The
watcher runs the way the daemon does, inside a namespace via ``ip netns
exec``: this file doubles as the driver (``python -m tests.host.test_links_host``)
that prints each snapshot as a JSON line. Changes are made with real ``ip``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.lab.netns import Netns, create_netns, delete_netns

REPO = Path(__file__).resolve().parents[2]

LinkTuple = tuple[int, str, str | None, bool]


# -- driver (runs inside the namespace) -------------------------------------

async def _drive(rcvbuf: int | None) -> None:
    from offloadd.kernel.links import LinkWatcher  # noqa: PLC0415

    watcher = LinkWatcher(rcvbuf=rcvbuf)
    async with contextlib.aclosing(watcher.snapshots()) as snaps:
        async for snap in snaps:
            line = {
                "t": time.monotonic(),
                "generation": snap.generation,
                "resync": snap.resync,
                "links": [[x.index, x.name, x.kind, x.up] for x in snap.links],
                "stats": vars(watcher.stats),
            }
            print(json.dumps(line), flush=True)


def _driver_main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rcvbuf", type=int, default=None)
    args = ap.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_drive(args.rcvbuf))


# -- test side ---------------------------------------------------------------

@dataclass(frozen=True)
class Snap:
    t: float
    generation: int
    resync: bool
    links: frozenset[LinkTuple]
    stats: dict[str, int]

    def by_name(self) -> dict[str, LinkTuple]:
        return {x[1]: x for x in self.links}


class Driver:
    """The watcher running in a namespace; snapshots arrive on a queue."""

    def __init__(self, ns: Netns, rcvbuf: int | None = None) -> None:
        cmd = [sys.executable, "-m", "tests.host.test_links_host"]
        if rcvbuf is not None:
            cmd += ["--rcvbuf", str(rcvbuf)]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(ns.argv(cmd), cwd=REPO, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.q: queue.Queue[Snap | None] = queue.Queue()
        self.seen: list[Snap] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            d = json.loads(line)
            links = frozenset((i, n, k, u) for i, n, k, u in d["links"])
            self.q.put(Snap(d["t"], d["generation"], d["resync"], links, d["stats"]))
        self.q.put(None)

    def wait_for(self, pred: Callable[[Snap], bool], timeout: float = 10) -> Snap:
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            try:
                snap = self.q.get(timeout=max(left, 0.001))
            except queue.Empty:
                last = self.seen[-1] if self.seen else None
                raise AssertionError(f"no matching snapshot in {timeout}s; last: {last}") from None
            if snap is None:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(f"watcher exited {self.proc.wait()}: {err}")
            self.seen.append(snap)
            if pred(snap):
                return snap

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def kernel_links(ns: Netns) -> frozenset[LinkTuple]:
    """What ``ip -j -d link show`` says, in the watcher's terms."""
    out: set[LinkTuple] = set()
    for d in json.loads(ns.out("ip", "-j", "-d", "link", "show")):
        if d.get("link_type") == "loopback":
            continue
        kind: Any = (d.get("linkinfo") or {}).get("info_kind")
        if kind is None and d.get("link_type") == "ppp":
            kind = "ppp"
        out.add((d["ifindex"], d["ifname"], kind, "UP" in d.get("flags", [])))
    return frozenset(out)


@pytest.fixture
def ns() -> Iterator[Netns]:
    if os.geteuid() != 0:
        pytest.fail("the link watcher host tests need root (ip netns)")
    n = create_netns(f"olw-{uuid.uuid4().hex[:8]}")
    try:
        yield n
    finally:
        delete_netns(n)


@pytest.fixture
def other_ns() -> Iterator[Netns]:
    n = create_netns(f"olw-o-{uuid.uuid4().hex[:8]}")
    try:
        yield n
    finally:
        delete_netns(n)


@contextlib.contextmanager
def watching(ns: Netns, rcvbuf: int | None = None) -> Iterator[Driver]:
    d = Driver(ns, rcvbuf)
    try:
        first = d.wait_for(lambda s: True)
        assert first.resync and first.generation == 1 and first.links == kernel_links(ns)
        yield d
    finally:
        d.stop()


def _batch(ns: Netns, lines: list[str]) -> None:
    ns.run("ip", "-batch", "-", input="\n".join(lines) + "\n", timeout=60)


def test_kinds_rename_updown_move_delete(ns: Netns, other_ns: Netns) -> None:
    with watching(ns) as d:
        _batch(ns, ["link add v0 type veth peer name v1", "link add br0 type bridge",
                    "link add mv0 link v0 type macvlan mode bridge"])
        s = d.wait_for(lambda s: {"v0", "v1", "br0", "mv0"} <= s.by_name().keys())
        by = s.by_name()
        assert (by["v0"][2], by["v1"][2], by["br0"][2], by["mv0"][2]) == (
            "veth", "veth", "bridge", "macvlan")
        assert not by["v0"][3]
        idx = by["v0"][0]

        # Leaving a bridge sends an AF_BRIDGE RTM_DELLINK: the port stays.
        ns.run("ip", "link", "set", "v1", "master", "br0")
        ns.run("ip", "link", "set", "v1", "nomaster")
        ns.run("ip", "link", "set", "v0", "name", "w0")
        s = d.wait_for(lambda s: "w0" in s.by_name())
        assert s.by_name()["w0"][0] == idx and "v0" not in s.by_name()
        assert "v1" in s.by_name()

        ns.run("ip", "link", "set", "w0", "up")
        d.wait_for(lambda s: s.by_name().get("w0", (0, "", None, False))[3])
        ns.run("ip", "link", "set", "w0", "down")
        d.wait_for(lambda s: not s.by_name()["w0"][3])

        ns.run("ip", "link", "set", "v1", "netns", other_ns.name)
        s = d.wait_for(lambda s: "v1" not in s.by_name())
        assert "w0" in s.by_name()
        ns.run("ip", "link", "del", "br0")
        s = d.wait_for(lambda s: "br0" not in s.by_name())
        time.sleep(0.3)
        assert d.seen[-1].links == kernel_links(ns)
        assert all(not x.resync for x in d.seen[1:])


def test_burst_of_500_veth_pairs_coalesces(ns: Netns) -> None:
    with watching(ns) as d:
        n = 500
        t0 = time.monotonic()
        _batch(ns, [f"link add a{i} type veth peer name b{i}" for i in range(n)])
        t_cmd = time.monotonic() - t0
        expected = kernel_links(ns)
        assert len(expected) == 2 * n
        s = d.wait_for(lambda s: s.links == expected, timeout=20)
        converged = s.t - t0
        count = len(d.seen)
        print(f"\n500 veth pairs: ip -batch took {t_cmd:.2f}s, converged after "
              f"{converged:.2f}s in {count} snapshots (incl. the initial one), stats {s.stats}")
        assert count <= 20
        time.sleep(0.7)  # nothing more may follow once converged
        assert d.q.empty()


def test_enobufs_triggers_resync_and_converges(ns: Netns) -> None:
    with watching(ns, rcvbuf=4096) as d:
        n = 300
        t0 = time.monotonic()
        _batch(ns, [f"link add a{i} type veth peer name b{i}" for i in range(n)])
        _batch(ns, [f"link set a{i} up" for i in range(0, n, 3)])
        expected = kernel_links(ns)
        s = d.wait_for(lambda s: s.links == expected, timeout=20)
        resyncs = [x for x in d.seen if x.resync]
        print(f"\ntiny rcvbuf, {n} pairs: converged after {s.t - t0:.2f}s in "
              f"{len(d.seen)} snapshots incl. the initial one ({len(resyncs)} with resync), "
              f"stats {s.stats}")
        assert resyncs, "expected ENOBUFS to force a resync"
        assert s.stats["resyncs_total"] >= 1
        time.sleep(0.7)
        while not d.q.empty():
            d.wait_for(lambda s: True, timeout=1)
        assert d.seen[-1].links == kernel_links(ns)


if __name__ == "__main__":
    _driver_main()
