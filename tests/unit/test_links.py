"""links: message parsing, the link table, and the watcher's coalescing and
resync logic against a fake kernel, on an event loop with virtual time
(tests.unit.virtualtime): coalescing is all about timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from offloadd.core.errors import ConfigError, KernelError, NetlinkOverrunError, OffloaddError
from offloadd.core.model import Link
from offloadd.kernel.linkmsg import (
    ARPHRD_LOOPBACK,
    ARPHRD_PPP,
    RTM_DELLINK,
    RTM_NEWLINK,
    LinkTable,
    link_from_msg,
)
from offloadd.kernel.links import (
    LinkSnapshot,
    LinkWatcher,
    current_links,
)
from tests.unit.virtualtime import run_virtual

ARPHRD_ETHER = 1
AF_BRIDGE = 7

# -- messages -------------------------------------------------------------------


def newlink(index: int, name: str, kind: str | None = None, *, up: bool = False,
            ifi_type: int = ARPHRD_ETHER, family: int = 0,
            mtype: int = RTM_NEWLINK, **extra: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "header": {"type": mtype}, "family": family, "index": index,
        "flags": 0x1 if up else 0, "ifi_type": ifi_type, "IFLA_IFNAME": name,
        "IFLA_LINKINFO": {"IFLA_INFO_KIND": kind} if kind is not None else None,
    }
    msg.update(extra)
    return msg


def dellink(index: int, name: str = "x", **extra: Any) -> dict[str, Any]:
    return newlink(index, name, mtype=RTM_DELLINK, **extra)


def pyroute2_msg(index: int, name: str, *, flags: int = 0, ifi_type: int = ARPHRD_ETHER,
                 linkinfo: list[tuple[str, str]] | None = None, family: int = 0) -> Any:
    """A real ifinfmsg, encoded and decoded as it would come off the socket."""
    m = ifinfmsg()
    m["header"]["type"] = RTM_NEWLINK
    m["family"] = family
    m["index"] = index
    m["flags"] = flags
    m["ifi_type"] = ifi_type
    attrs: list[Any] = [("IFLA_IFNAME", name)]
    if linkinfo is not None:
        attrs.append(("IFLA_LINKINFO", {"attrs": linkinfo}))
    m["attrs"] = attrs
    m.encode()
    out = ifinfmsg(m.data)
    out.decode()
    return out


# -- link_from_msg -------------------------------------------------------------


def test_link_from_pyroute2_messages() -> None:
    veth = pyroute2_msg(5, "v0", flags=0x1, linkinfo=[("IFLA_INFO_KIND", "veth")])
    assert link_from_msg(veth) == Link(5, "v0", "veth", True)
    assert link_from_msg(pyroute2_msg(2, "eth0")) == Link(2, "eth0", None, False)
    # A NIC enslaved to a bridge has linkinfo with only the slave kind.
    port = pyroute2_msg(3, "eth1", linkinfo=[("IFLA_INFO_SLAVE_KIND", "bridge")])
    assert link_from_msg(port) == Link(3, "eth1", None, False)
    ppp = pyroute2_msg(9, "ppp0", flags=0x1, ifi_type=ARPHRD_PPP)
    assert link_from_msg(ppp) == Link(9, "ppp0", "ppp", True)
    assert link_from_msg(pyroute2_msg(1, "lo", flags=0x9, ifi_type=ARPHRD_LOOPBACK)) is None
    assert link_from_msg(pyroute2_msg(5, "v0", family=AF_BRIDGE)) is None


def test_link_from_dict_messages() -> None:
    assert link_from_msg(newlink(4, "br0", "bridge", up=True)) == Link(4, "br0", "bridge", True)
    assert link_from_msg(newlink(4, "br0", "bridge")) == Link(4, "br0", "bridge", False)
    # A kind from linkinfo wins over the ppp fallback.
    l2tp = newlink(6, "p", "l2tp", ifi_type=ARPHRD_PPP)
    assert link_from_msg(l2tp) == Link(6, "p", "l2tp", False)
    assert link_from_msg(newlink(1, "lo", ifi_type=ARPHRD_LOOPBACK)) is None
    assert link_from_msg(newlink(7, "")) is None


# -- LinkTable -----------------------------------------------------------------


def test_table_add_rename_updown_delete() -> None:
    t = LinkTable()
    assert t.apply(newlink(3, "v0", "veth"))
    assert not t.apply(newlink(3, "v0", "veth"))  # e.g. an mtu change: not visible
    assert t.apply(newlink(2, "z", "bridge"))
    assert t.links() == (Link(3, "v0", "veth", False), Link(2, "z", "bridge", False))
    assert t.apply(newlink(3, "w0", "veth"))  # rename: same index, new name
    assert t.get(3) == Link(3, "w0", "veth", False) and len(t) == 2
    assert t.apply(newlink(3, "w0", "veth", up=True))
    assert t.apply(newlink(3, "w0", "veth", up=False))
    assert t.apply(dellink(3))
    assert not t.apply(dellink(3))
    assert t.links() == (Link(2, "z", "bridge", False),)


def test_table_netns_move_and_bridge_port_messages() -> None:
    t = LinkTable([Link(3, "v1", "veth"), Link(4, "br0", "bridge")])
    # `ip link set v1 nomaster` sends an AF_BRIDGE RTM_DELLINK: v1 stays.
    assert not t.apply(dellink(3, "v1", family=AF_BRIDGE))
    assert not t.apply(newlink(3, "v1", family=AF_BRIDGE))
    assert t.get(3) == Link(3, "v1", "veth")
    # Moved to another namespace: RTM_DELLINK with IFLA_NEW_NETNSID.
    assert t.apply(dellink(3, "v1", IFLA_NEW_NETNSID=0))
    assert t.get(3) is None
    assert not t.apply({"header": {"type": 24}, "family": 0, "index": 4})  # not a link msg
    assert not t.apply(newlink(1, "lo", ifi_type=ARPHRD_LOOPBACK))
    assert len(t) == 1


IFF_UP, IFF_RUNNING, IFF_LOWER_UP = 0x1, 0x40, 0x10000


def _flushes_after(t: LinkTable, msg: dict[str, Any]) -> int:
    before = t.route_flushes
    t.apply(msg)
    return t.route_flushes - before


def test_table_counts_the_link_events_that_flush_the_route_cache() -> None:
    """The events after which Linux 7.3 leaves offloaded IPv4 flows behind
    (offloadd.core.repair): what fib_netdev_event and arp_netdev_event
    flush the route cache for, read from link messages."""
    t = LinkTable()
    up = IFF_UP | IFF_RUNNING | IFF_LOWER_UP
    # A device registered down flushes nothing; coming up does.
    assert _flushes_after(t, newlink(3, "lan9", "veth", IFLA_MTU=1500)) == 0
    assert _flushes_after(t, newlink(3, "lan9", "veth", up=True, IFLA_MTU=1500)) == 1
    # One first seen already up (its events coalesced) counts as having come up.
    assert _flushes_after(t, newlink(4, "br-lan", "bridge", flags=up, IFLA_MTU=1500,
                                     IFLA_ADDRESS=b"\x02\0\0\0\0\x01")) == 1
    br: dict[str, Any] = {"flags": up, "IFLA_MTU": 1500, "IFLA_ADDRESS": b"\x02\0\0\0\0\x01"}
    assert _flushes_after(t, newlink(4, "br-lan", "bridge", **br)) == 0  # stats, nothing else
    # A port joining or leaving may change the bridge's address (the lowest
    # of its ports'): ARP flushes the route cache for it.
    assert _flushes_after(t, newlink(4, "br-lan", "bridge",
                                     **{**br, "IFLA_ADDRESS": b"\x02\0\0\0\0\x00"})) == 1
    assert _flushes_after(t, newlink(4, "br-lan", "bridge",
                                     **{**br, "IFLA_ADDRESS": b"\x02\0\0\0\0\x00",
                                        "flags": IFF_UP})) == 1  # carrier lost
    assert _flushes_after(t, newlink(4, "br-lan", "bridge",
                                     **{**br, "IFLA_ADDRESS": b"\x02\0\0\0\0\x00",
                                        "flags": IFF_UP, "IFLA_MTU": 9000})) == 1
    # A rename, a new master: no flush.
    assert _flushes_after(t, newlink(3, "lan8", "veth", up=True, IFLA_MTU=1500)) == 0
    assert _flushes_after(t, newlink(3, "lan8", "veth", up=True, IFLA_MTU=1500,
                                     IFLA_MASTER=4)) == 0
    # Bridge-port reports and loopback say nothing of the device.
    assert _flushes_after(t, newlink(3, "lan8", family=AF_BRIDGE, flags=0)) == 0
    assert _flushes_after(t, dellink(3, family=AF_BRIDGE)) == 0
    assert _flushes_after(t, newlink(1, "lo", ifi_type=ARPHRD_LOOPBACK, up=True)) == 0
    # Gone: unregistering flushes; a second DELLINK for it does not count again.
    assert _flushes_after(t, dellink(3)) == 1
    assert _flushes_after(t, dellink(3)) == 0


def test_table_replace_counts_a_flush_only_after_missed_events() -> None:
    t = LinkTable()
    t.replace([newlink(3, "a", up=True, IFLA_MTU=1500), newlink(4, "b", up=True)])
    assert t.route_flushes == 0  # the first dump: nothing was missed
    t.replace([newlink(3, "a", up=True, IFLA_MTU=1500), newlink(4, "b", up=True)])
    assert t.route_flushes == 0  # a resync that finds everything as it was
    t.replace([newlink(3, "a", up=True, IFLA_MTU=1400), newlink(4, "b", up=True)])
    assert t.route_flushes == 1
    t.replace([newlink(3, "a", up=True, IFLA_MTU=1400)])
    assert t.route_flushes == 2


def test_table_replace_reports_change() -> None:
    t = LinkTable([Link(3, "a", None, False)])
    assert not t.replace([newlink(3, "a"), newlink(1, "lo", ifi_type=ARPHRD_LOOPBACK)])
    assert t.replace([newlink(3, "a"), newlink(4, "b", "veth")])
    assert [x.name for x in t.links()] == ["a", "b"]


# -- fake kernel ---------------------------------------------------------------


OVERRUN = object()


@dataclass
class FakeKernel:
    """Links of one namespace; every change is sent to the bound sockets.

    A socket holding `capacity` unread messages drops further ones and then
    reports ENOBUFS once, after what it already holds: as the kernel does.
    """

    capacity: int | None = None
    links: dict[int, Link] = field(default_factory=dict)
    sockets: list[FakeSocket] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    during_dump: Callable[[], None] | None = None
    next_index: int = 2

    def factory(self) -> FakeSocket:
        sock = FakeSocket(self)
        self.sockets.append(sock)
        return sock

    def _emit(self, msg: dict[str, Any]) -> None:
        for sock in self.sockets:
            if sock.bound and not sock.closed:
                sock.deliver(msg)

    def msg(self, link: Link) -> dict[str, Any]:
        return newlink(link.index, link.name, link.kind, up=link.up)

    def add(self, name: str, kind: str | None = "veth", up: bool = False) -> int:
        index = self.next_index
        self.next_index += 1
        self.links[index] = Link(index, name, kind, up)
        self._emit(self.msg(self.links[index]))
        return index

    def change(self, index: int, **kw: Any) -> None:
        old = self.links[index]
        self.links[index] = Link(index, kw.get("name", old.name), old.kind, kw.get("up", old.up))
        self._emit(self.msg(self.links[index]))

    def touch(self, index: int, **extra: Any) -> None:
        """A NEWLINK that changes nothing visible (stats; or, with `extra`,
        the carrier flags or MTU)."""
        self._emit({**self.msg(self.links[index]), **extra})

    def delete(self, index: int, to_netns: int | None = None) -> None:
        link = self.links.pop(index)
        extra = {} if to_netns is None else {"IFLA_NEW_NETNSID": to_netns}
        self._emit(dellink(index, link.name, **extra))

    def overrun(self) -> None:
        for sock in self.sockets:
            if sock.bound and not sock.closed:
                sock.overrun()

    def state(self) -> tuple[Link, ...]:
        return tuple(sorted(self.links.values(), key=lambda x: (x.name, x.index)))

    def open_sockets(self) -> list[FakeSocket]:
        return [s for s in self.sockets if not s.closed]


class FakeSocket:
    def __init__(self, kernel: FakeKernel) -> None:
        self.kernel = kernel
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.bound = self.closed = self.overflowed = False

    def deliver(self, msg: dict[str, Any]) -> None:
        cap = self.kernel.capacity
        if self.overflowed:
            return
        if cap is not None and self.queue.qsize() >= cap:
            self.overrun()
            return
        self.queue.put_nowait(msg)

    def overrun(self) -> None:
        if not self.overflowed:
            self.overflowed = True
            self.queue.put_nowait(OVERRUN)

    async def open(self) -> None:
        self.kernel.log.append("open")

    async def bind(self) -> None:
        self.kernel.log.append("bind")
        self.bound = True

    async def dump(self) -> list[dict[str, Any]]:
        self.kernel.log.append("dump")
        msgs = [self.kernel.msg(x) for x in self.kernel.links.values()]
        msgs.append(newlink(1, "lo", ifi_type=ARPHRD_LOOPBACK, up=True))
        if self.kernel.during_dump is not None:
            race, self.kernel.during_dump = self.kernel.during_dump, None
            race()  # a change the dump missed, made while it was being sent
        return msgs

    async def recv(self) -> list[dict[str, Any]]:
        item = await self.queue.get()
        if item is OVERRUN:
            self.overflowed = False
            raise NetlinkOverrunError(errno.ENOBUFS, "No buffer space available")
        assert isinstance(item, dict)
        return [item]

    def close(self) -> None:
        self.kernel.log.append("close")
        self.closed = True


Timed = tuple[float, LinkSnapshot]


async def watch(kernel: FakeKernel, watcher: LinkWatcher,
                script: Callable[[], Awaitable[None]], settle: float = 2.0) -> list[Timed]:
    """Runs the watcher while `script` changes the kernel; (time, snapshot) pairs."""
    loop = asyncio.get_running_loop()
    got: list[Timed] = []

    async def consume() -> None:
        async with contextlib.aclosing(watcher.snapshots()) as snaps:
            async for snap in snaps:
                got.append((loop.time(), snap))

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.001)  # the initial dump is instant in virtual time
    await script()
    await asyncio.sleep(settle)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    if task.done() and not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]
    return got


# -- watcher -------------------------------------------------------------------


async def _nothing() -> None:
    pass


def test_initial_snapshot_binds_before_dump_and_closes() -> None:
    kernel = FakeKernel()
    kernel.add("v1")
    kernel.add("v0", up=True)
    watcher = LinkWatcher(socket_factory=kernel.factory)
    late: list[int] = []
    kernel.during_dump = lambda: late.append(kernel.add("late"))

    async def main() -> None:
        got = await watch(kernel, watcher, _nothing, settle=1.0)
        first = got[0][1]
        assert first == LinkSnapshot(
            (Link(3, "v0", "veth", True), Link(2, "v1", "veth", False)), 1, True)
        # The change made during the dump still arrives, as an event.
        assert [s.names for _, s in got] == [{"v0", "v1"}, {"v0", "v1", "late"}]
        assert got[1][1].generation == 2 and not got[1][1].resync
        assert got[-1][1].links == kernel.state()

    run_virtual(main)
    assert kernel.log == ["open", "bind", "dump", "close"]
    assert not kernel.open_sockets()
    assert vars(watcher.stats) == {"events_total": 1, "resyncs_total": 0, "snapshots_total": 2}


def test_burst_of_500_is_one_snapshot() -> None:
    kernel = FakeKernel()
    watcher = LinkWatcher(socket_factory=kernel.factory)

    async def script() -> None:
        for i in range(250):
            kernel.add(f"a{i}")
            kernel.add(f"b{i}")

    async def main() -> None:
        got = await watch(kernel, watcher, script)
        assert len(got) == 2
        t, snap = got[1]
        assert snap.links == kernel.state() and len(snap.links) == 500
        assert t == pytest.approx(0.001 + watcher.quiet)

    run_virtual(main)
    assert watcher.stats.events_total == 500


def test_spread_burst_is_cut_by_max_delay() -> None:
    # 500 links, one every 2 ms (under `quiet`): one second of steady events.
    kernel = FakeKernel()
    watcher = LinkWatcher(socket_factory=kernel.factory, quiet=0.05, max_delay=0.3)
    starts: list[float] = []

    async def script() -> None:
        loop = asyncio.get_running_loop()
        starts.append(loop.time())
        for i in range(500):
            kernel.add(f"l{i:03}")
            await asyncio.sleep(0.002)

    async def main() -> None:
        got = await watch(kernel, watcher, script)
        times = [t for t, _ in got[1:]]
        # Every snapshot comes max_delay after its burst's first event, except
        # the last, which comes `quiet` after the final event.
        assert len(times) == 4, times
        first_event = starts[0]
        for t in times[:-1]:
            assert t - first_event == pytest.approx(0.3, abs=0.003)
            first_event = t
        assert times[-1] == pytest.approx(starts[0] + 0.998 + 0.05, abs=0.003)
        assert got[-1][1].links == kernel.state()
        assert [s.generation for _, s in got] == [1, 2, 3, 4, 5]

    run_virtual(main)


def test_quiet_splits_and_merges_bursts() -> None:
    kernel = FakeKernel()
    # quick_messages=0: every burst is coalesced with `quiet` from its first message.
    watcher = LinkWatcher(socket_factory=kernel.factory, quiet=0.05, max_delay=0.5,
                          quick_messages=0)

    async def script() -> None:
        kernel.add("a")  # t=0.001
        await asyncio.sleep(0.04)
        kernel.add("b")  # within quiet: same burst
        await asyncio.sleep(0.2)
        kernel.add("c")  # after quiet: a new burst

    async def main() -> None:
        got = await watch(kernel, watcher, script)
        assert [(round(t, 6), sorted(s.names)) for t, s in got] == [
            (0.0, []), (0.091, ["a", "b"]), (0.291, ["a", "b", "c"])]

    run_virtual(main)


def test_a_small_change_is_yielded_after_quick_and_a_burst_after_quiet() -> None:
    """One link (a few messages) is attached `quick` after it appears, not
    `quiet`; more than quick_messages in a row are coalesced as before."""
    kernel = FakeKernel()
    watcher = LinkWatcher(socket_factory=kernel.factory, quiet=0.05, max_delay=2.0,
                          quick=0.01, quick_messages=8)

    async def script() -> None:
        kernel.add("a")  # t=0.001: alone
        await asyncio.sleep(0.04)
        kernel.add("b")  # t=0.041: alone again (a was yielded at 0.011)
        await asyncio.sleep(0.2)
        for i in range(20):  # t=0.241..: a burst, 3 ms apart
            kernel.add(f"c{i:02}")
            await asyncio.sleep(0.003)

    async def main() -> None:
        got = await watch(kernel, watcher, script)
        assert [(round(t, 3), len(s.names)) for t, s in got] == [
            (0.0, 0), (0.011, 1), (0.051, 2),
            # The burst's first 8 messages leave no 10 ms gap; the 9th
            # switches it to `quiet`: one snapshot, 50 ms after the last.
            (round(0.241 + 19 * 0.003 + 0.05, 3), 22)]

    run_virtual(main)


def test_invisible_changes_yield_nothing_but_count() -> None:
    kernel = FakeKernel()
    idx = kernel.add("a")
    watcher = LinkWatcher(socket_factory=kernel.factory)

    async def script() -> None:
        for _ in range(3):
            kernel.touch(idx)
            await asyncio.sleep(0.2)
        kernel.change(idx, up=True)
        await asyncio.sleep(0.2)
        kernel.change(idx, name="b")
        await asyncio.sleep(0.2)
        kernel.delete(idx, to_netns=4)

    async def main() -> None:
        got = await watch(kernel, watcher, script)
        assert [s.links for _, s in got] == [
            (Link(idx, "a", "veth", False),),
            (Link(idx, "a", "veth", True),),
            (Link(idx, "b", "veth", True),),
            (),
        ]

    run_virtual(main)
    assert watcher.stats.events_total == 6 and watcher.stats.snapshots_total == 4


def test_a_carrier_change_yields_a_snapshot_that_counts_a_route_flush() -> None:
    """No link changes as Link says (snapshots stay quiet on stats), but the
    route cache was flushed: the snapshot says so, for the repair's check."""
    kernel = FakeKernel()
    idx = kernel.add("a", up=True)
    watcher = LinkWatcher(socket_factory=kernel.factory)

    async def script() -> None:
        kernel.touch(idx, flags=0x1 | 0x40 | 0x10000)  # carrier up
        await asyncio.sleep(0.2)
        kernel.touch(idx, flags=0x1 | 0x40 | 0x10000)  # stats only
        await asyncio.sleep(0.2)
        kernel.touch(idx, flags=0x1, IFLA_MTU=1400)  # carrier lost, MTU changed

    async def main() -> None:
        got = await watch(kernel, watcher, script)
        assert [(s.links, s.route_flushes) for _, s in got] == [
            ((Link(idx, "a", "veth", True),), 0),
            ((Link(idx, "a", "veth", True),), 1),
            ((Link(idx, "a", "veth", True),), 2),
        ]

    run_virtual(main)


def test_overrun_resyncs_to_the_kernel_state() -> None:
    kernel = FakeKernel(capacity=50)
    keep = kernel.add("keep")
    gone = kernel.add("gone")
    watcher = LinkWatcher(socket_factory=kernel.factory)

    async def script() -> None:
        for i in range(300):  # far more than the socket holds: messages lost
            kernel.add(f"n{i:03}")
        kernel.delete(gone)
        kernel.change(keep, up=True)

    async def main() -> None:
        got = await watch(kernel, watcher, script)
        assert len(got) == 2
        snap = got[1][1]
        assert snap.resync and snap.generation == 2
        assert snap.links == kernel.state() and len(snap.links) == 301

    run_virtual(main)
    assert kernel.log == ["open", "bind", "dump", "close", "open", "bind", "dump", "close"]
    assert watcher.stats.resyncs_total == 1 and watcher.stats.events_total == 50
    assert not kernel.open_sockets()


def test_overrun_while_idle_yields_a_resync_snapshot() -> None:
    kernel = FakeKernel()
    kernel.add("a")
    watcher = LinkWatcher(socket_factory=kernel.factory)

    async def script() -> None:
        kernel.overrun()
        await asyncio.sleep(1)
        kernel.overrun()
        await asyncio.sleep(0.01)
        kernel.overrun()  # on the new socket, during the same burst

    async def main() -> None:
        got = await watch(kernel, watcher, script)
        assert [(s.generation, s.resync, s.names) for _, s in got] == [
            (1, True, frozenset({"a"})), (2, True, frozenset({"a"})), (3, True, frozenset({"a"}))]

    run_virtual(main)
    assert watcher.stats.resyncs_total == 3 and watcher.stats.snapshots_total == 3


class _OpsMachine:
    """Random kernel operations for the property test."""

    ops = st.lists(st.tuples(st.sampled_from(["add", "up", "down", "rename", "del", "move",
                                              "touch", "overrun", "wait"]),
                             st.integers(0, 1000)), max_size=60)


@settings(max_examples=60, deadline=None)
@given(_OpsMachine.ops, st.sampled_from([None, 5]))
def test_final_snapshot_always_matches_kernel(ops: list[tuple[str, int]],
                                              capacity: int | None) -> None:
    kernel = FakeKernel(capacity=capacity)
    watcher = LinkWatcher(socket_factory=kernel.factory)

    async def script() -> None:
        for op, n in ops:
            idxs = sorted(kernel.links)
            pick = idxs[n % len(idxs)] if idxs else None
            if op == "add":
                kernel.add(f"d{n}", kind=None if n % 2 else "veth")
            elif op == "wait":
                await asyncio.sleep(n / 5000)
            elif op == "overrun":
                kernel.overrun()
            elif pick is None:
                continue
            elif op in ("up", "down"):
                kernel.change(pick, up=op == "up")
            elif op == "rename":
                kernel.change(pick, name=f"r{n}")
            elif op == "touch":
                kernel.touch(pick)
            else:
                kernel.delete(pick, to_netns=1 if op == "move" else None)

    async def main() -> None:
        got = await watch(kernel, watcher, script)
        assert got[-1][1].links == kernel.state()
        assert [s.generation for _, s in got] == list(range(1, len(got) + 1))

    run_virtual(main)


def test_bad_timings_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        LinkWatcher(quiet=0)
    with pytest.raises(ConfigError):
        LinkWatcher(quiet=0.5, max_delay=0.1)
    with pytest.raises(ConfigError, match="quick"):
        LinkWatcher(quiet=0.05, quick=0.1)


def test_overrun_error_is_a_kernel_error() -> None:
    e = NetlinkOverrunError(errno.ENOBUFS, "x")
    assert isinstance(e, KernelError) and isinstance(e, OSError)
    assert isinstance(e, OffloaddError) and e.errno == errno.ENOBUFS


def test_current_links_dumps_once() -> None:
    kernel = FakeKernel()
    kernel.add("b", kind=None, up=True)
    kernel.add("a", kind="bridge")

    async def main() -> None:
        links = await current_links(kernel.factory)
        assert links == (Link(3, "a", "bridge", False), Link(2, "b", None, True))

    run_virtual(main)
    assert kernel.log == ["open", "dump", "close"]
