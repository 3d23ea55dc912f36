"""In-memory stand-ins for the kernel edges, for unit tests of the daemon.

The fake table applies plans with the pure simulator, which refuses what the
kernel would refuse, so a daemon bug that builds an invalid batch fails here.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

from offloadd.core.errors import DeviceVanishedError, KernelError, NftError
from offloadd.core.model import Link, TableState
from offloadd.core.plan import Plan
from offloadd.core.render import render
from offloadd.core.simulate import apply_plan
from offloadd.core.stack import PppoeSessions
from offloadd.core.xtables import LegacyTables


@dataclass
class FakeBackend:
    family: str = "inet"
    table: str = "offloadd"
    state: TableState | None = None
    others: list[int] = field(default_factory=list)
    hw: dict[str, bool] = field(default_factory=dict)
    applied: list[Plan] = field(default_factory=list)
    vanish_next: int = 0
    corrupt_reads: bool = False
    accounting: bool = False
    # device -> the kernel's complaint: any batch attaching it is refused
    refuse: dict[str, str] = field(default_factory=dict)
    refuse_all: str = ""  # every batch is refused with this
    checks: int = 0
    wildcards: bool = False  # the kernel hooks "wan*" by prefix
    # Other tables' base chain hooks ((family, table) -> hooks), as `list chains` shows.
    hooks: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)
    hook_reads: int = 0
    legacy: LegacyTables = field(default_factory=LegacyTables)
    pppoe: PppoeSessions = field(default_factory=PppoeSessions)
    conntrack_max: int | None = None  # nf_conntrack_max; None: not readable
    # Set name -> elements count_elements answers (absent: the set is not there).
    elements: dict[str, int] = field(default_factory=dict)
    count_fail: str = ""  # count_elements raises KernelError with this
    counts: int = 0  # count_elements calls
    # The CPU seconds of each datagram's walk a count reports to its pacing.
    count_walks: tuple[float, ...] = ()
    # The table is deleted (its event lost) just before the Nth read from
    # now, counted down; 0: never.
    delete_table_at_read: int = 0

    def read(self) -> TableState | None:
        if self.delete_table_at_read:
            self.delete_table_at_read -= 1
            if not self.delete_table_at_read:
                self.state = None
        if self.corrupt_reads and self.state is not None:
            return TableState(self.state.name, self.state.family)
        return self.state

    def other_forward_priorities(self) -> list[int]:
        return list(self.others)

    def base_chain_hooks(self) -> dict[tuple[str, str], frozenset[str]]:
        self.hook_reads += 1
        return dict(self.hooks)

    def legacy_tables(self) -> LegacyTables:
        return self.legacy

    def pppoe_sessions(self) -> PppoeSessions:
        return self.pppoe

    def conntrack_limit(self) -> int | None:
        return self.conntrack_max

    def count_elements(self, name: str,
                       after_datagram: Callable[[float], None] | None = None) -> int | None:
        self.counts += 1
        if after_datagram is not None:
            for cpu_s in self.count_walks:
                after_datagram(cpu_s)
        if self.count_fail:
            raise KernelError(self.count_fail)
        return self.elements.get(name)

    def hw_capable(self, device: str) -> tuple[bool, str]:
        ok = self.hw.get(device, False)
        return ok, "fake: capable" if ok else "fake: not capable"

    def ensure_accounting(self) -> None:
        self.accounting = True

    def _refusal(self, plan: Plan) -> None:
        if self.refuse_all and plan.ops:
            raise NftError(f"nft refused the transaction: {self.refuse_all}")
        for dev in sorted(plan.attached_devices & self.refuse.keys()):
            raise NftError(f"nft refused the transaction: {self.refuse[dev]}")
        apply_plan(self.state, plan, wildcards=self.wildcards)  # refused in any case

    def check(self, plan: Plan) -> None:
        self.checks += 1
        self._refusal(plan)

    def apply(self, plan: Plan) -> str:
        if self.vanish_next:
            self.vanish_next -= 1
            raise DeviceVanishedError("nft refused the transaction: No such file or directory")
        self._refusal(plan)
        self.state = apply_plan(self.state, plan, wildcards=self.wildcards)
        self.applied.append(plan)
        return render(plan, self.family, self.table)


@dataclass(frozen=True)
class Snap:
    links: tuple[Link, ...]
    resync: bool = False
    route_flushes: int = 0


class FakeLinks:
    """Yields the snapshots pushed into it, like the watcher after a quiet point."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Snap] = asyncio.Queue()
        self.route_flushes = 0

    def push(self, *links: Link, flushes: int = 0) -> None:
        """A snapshot of these links, after `flushes` more route cache flushes."""
        self.route_flushes += flushes
        self.queue.put_nowait(Snap(tuple(links), route_flushes=self.route_flushes))

    async def snapshots(self) -> AsyncIterator[Snap]:
        while True:
            yield await self.queue.get()


class NetlinkPeer(Protocol):
    """A fake kernel end of a netlink socket: the datagrams a request gets."""

    sent: list[bytes]
    closed: int

    def answer(self, request: bytes) -> list[bytes]: ...


class FakeNetlinkSocket:
    """The raw netlink socket seam (offloadd.kernel.ctnetlink.NetlinkSocket)
    over a fake kernel: each request recorded, its answer read datagram by
    datagram, truncation reported as the kernel does with MSG_TRUNC."""

    def __init__(self, kernel: NetlinkPeer) -> None:
        self.kernel = kernel
        self.queue: list[bytes] = []

    def send(self, data: bytes, /) -> int:
        self.kernel.sent.append(data)
        self.queue = self.kernel.answer(data)
        return len(data)

    def recv_into(self, buffer: bytearray, nbytes: int = 0, flags: int = 0, /) -> int:
        data = self.queue.pop(0)
        n = min(len(data), len(buffer))
        buffer[:n] = data[:n]
        return len(data) if flags & socket.MSG_TRUNC else n

    def close(self) -> None:
        self.kernel.closed += 1
