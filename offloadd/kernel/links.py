"""The machine's network interfaces as a stream of snapshots.

Why: flowtable device lists must follow interfaces as they appear, vanish,
get renamed or move between namespaces. The kernel reports every change on
the rtnetlink link group, but a busy moment (a VPN concentrator bringing up
hundreds of tunnels) produces thousands of messages, and re-planning nft for
each would be wasteful. So the watcher keeps a table of links, coalesces a
burst of messages into one snapshot, and recovers from a receive-buffer
overrun (ENOBUFS: messages were lost) by dumping all links again.

Kernel access sits behind the small ``LinkSocket`` protocol so the parsing,
table and coalescing logic can be tested without root against a fake. The
table link messages update is in offloadd.kernel.linkmsg; the default socket,
a raw one that reads only what offloadd needs, is in offloadd.kernel.rtnl
(pyroute2's parsing took 3.5 ms a message under emulation). The pyroute2
socket stays as ``PyrouteLinkSocket``, for a comparison or a fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from offloadd.core.errors import (
    ConfigError,
    KernelError,
    MissingDependencyError,
    NetlinkOverrunError,
)
from offloadd.core.model import Link
from offloadd.kernel.linkmsg import LinkTable, NlMsg
from offloadd.kernel.rtnl import RawLinkSocket

# Value of pyroute2's RTMGRP_LINK; kept here so the pure parts need no pyroute2.
RTMGRP_LINK = 0x1

DEFAULT_QUIET = 0.05
# A change of a few messages (one link added, removed, renamed: a veth pair
# is two) is yielded once the socket has been silent this long, not after
# the whole `quiet`: the device is slow-pathed until it is attached, and
# `quiet` was half of the attach time (p50 111 ms on 6.12 under TCG). Once a
# burst exceeds QUICK_MESSAGES it is coalesced with `quiet` as before.
DEFAULT_QUICK = 0.01
QUICK_MESSAGES = 8
# A burst longer than this is cut into several snapshots (several
# transactions). 0.5 s cut a 500-link burst on 7.3 into 6: creating the links
# took 0.8 s, parsing their 1000 messages took the watcher 3.5 s under TCG.
# A single change is unaffected (it ends with the quiet period).
DEFAULT_MAX_DELAY = 2.0
log = logging.getLogger("offloadd")

# The dump itself can overrun when events flood the freshly subscribed socket
# meanwhile (seen in the lab with a 4 KiB buffer and 80 veth pairs at once).
MAX_RESYNC_ATTEMPTS = 5  # immediate retries before backing off
# (first, max) seconds of the backoff after them; the daemon passes its
# Timing's (service.timing), these are the defaults.
RESYNC_BACKOFF = (0.05, 2.0)


class LinkSocket(Protocol):
    """One rtnetlink socket for link messages; reopened by making a new one."""

    async def open(self) -> None:
        """Create the socket (not yet subscribed)."""

    async def bind(self) -> None:
        """Subscribe to the link multicast group; messages queue from now on."""

    async def dump(self) -> Sequence[NlMsg]:
        """All links of this network namespace (RTM_NEWLINK messages)."""

    async def recv(self) -> Sequence[NlMsg]:
        """The next messages from the group; raises NetlinkOverrunError on ENOBUFS."""

    def close(self) -> None:
        """Release the socket; safe to call after an error and more than once."""


@dataclass(frozen=True)
class LinkSnapshot:
    links: tuple[Link, ...]  # sorted by name
    generation: int  # 1 for the first snapshot, +1 for each one after
    resync: bool  # content comes from a full dump (start, or after an overrun)
    # Link events so far that flush the IPv4 route cache (LinkTable.route_flushes):
    # a snapshot is yielded when this grows, even if no link changed.
    route_flushes: int = 0

    @property
    def names(self) -> frozenset[str]:
        return frozenset(link.name for link in self.links)


@dataclass
class WatcherStats:
    """Counters for metrics; mutated only by the watcher that owns them."""

    events_total: int = 0  # link messages received from the multicast group
    resyncs_total: int = 0  # full re-dumps after an overrun
    snapshots_total: int = 0


class PyrouteLinkSocket:
    """LinkSocket over pyroute2's AsyncIPRoute, in the process's own netns."""

    def __init__(self, rcvbuf: int | None = None) -> None:
        self._rcvbuf = rcvbuf
        self._ipr: Any = None

    async def open(self) -> None:
        try:
            from pyroute2 import AsyncIPRoute  # noqa: PLC0415
        except ImportError as e:
            raise MissingDependencyError(
                "offloadd needs pyroute2 >= 0.9 (pip install 'pyroute2>=0.9,<0.10')"
            ) from e
        # pyroute2 sets SO_RCVBUF from this (the kernel doubles it and clamps
        # it to net.core.rmem_max); a tiny value lets tests provoke ENOBUFS.
        kw: dict[str, Any] = {} if self._rcvbuf is None else {"rcvbuf": self._rcvbuf}
        self._ipr = AsyncIPRoute(**kw)

    def _sock(self) -> Any:
        if self._ipr is None:
            raise KernelError(errno.EBADF, "link socket is not open")
        return self._ipr

    async def bind(self) -> None:
        try:
            await self._sock().bind(groups=RTMGRP_LINK)
        except Exception as e:
            raise _translate(e) from e

    async def dump(self) -> list[NlMsg]:
        try:
            return [m async for m in await self._sock().link("dump")]
        except Exception as e:
            raise _translate(e) from e

    async def recv(self) -> list[NlMsg]:
        while True:
            try:
                # get() with no sequence number ends after one datagram.
                batch: list[NlMsg] = [m async for m in self._sock().get()]
            except Exception as e:
                raise _translate(e) from e
            if batch:
                return batch

    def close(self) -> None:
        ipr, self._ipr = self._ipr, None
        if ipr is not None:
            # After ENOBUFS pyroute2 marks the socket failed and parts of its
            # teardown re-raise that error; the fd is released regardless.
            with contextlib.suppress(Exception):
                ipr.close()


def _translate(e: Exception) -> Exception:
    """pyroute2's errors as offloadd's: OSError (0.9.7) or NetlinkError (code)."""
    code = getattr(e, "errno", None) or getattr(e, "code", None)
    if not isinstance(code, int):
        return KernelError(errno.EIO, f"rtnetlink link socket: {e!r}")
    if code == errno.ENOBUFS:
        return NetlinkOverrunError(code, "netlink receive buffer overrun: link messages lost")
    return KernelError(code, f"rtnetlink link socket: {e}")


class _Reader:
    """One open LinkSocket plus at most one outstanding recv().

    The recv stays pending across timeouts instead of being cancelled, so a
    batch that arrives just as a quiet period ends is never dropped.
    """

    def __init__(self, factory: Callable[[], LinkSocket],
                 backoff: tuple[float, float] = RESYNC_BACKOFF) -> None:
        self._factory = factory
        self._backoff = backoff
        self._sock: LinkSocket | None = None
        self._pending: asyncio.Task[Sequence[NlMsg]] | None = None

    async def connect(self) -> Sequence[NlMsg]:
        """(Re)opens, subscribes, then dumps; returns the dump.

        Subscribing before dumping means a change racing the dump is queued
        as a message and applied after it, instead of being lost.
        """
        delay, delay_max = self._backoff
        attempt = 0
        while True:
            attempt += 1
            await self.close()
            sock = self._factory()
            self._sock = sock
            await sock.open()
            await sock.bind()
            try:
                return await sock.dump()
            except NetlinkOverrunError:
                # A storm of changes can overrun even the fresh socket while
                # it dumps. Giving up would stop the daemon's view of links
                # for good; backing off lets the storm pass, then the dump
                # gets through.
                if attempt >= MAX_RESYNC_ATTEMPTS:
                    log.warning("link dump overrun %d times in a row; retrying in %.2fs",
                                attempt, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, delay_max)

    async def next(self, timeout: float | None) -> Sequence[NlMsg] | None:
        """The next batch, or None if `timeout` seconds pass without one."""
        if self._sock is None:
            raise KernelError(errno.EBADF, "link socket is not open")
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._sock.recv())
        done, _ = await asyncio.wait({self._pending}, timeout=timeout)
        if not done:
            return None
        task, self._pending = self._pending, None
        return task.result()

    async def close(self) -> None:
        task, self._pending = self._pending, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


class LinkWatcher:
    """Yields a LinkSnapshot at start and after each burst of link changes.

    A burst ends when `quiet` seconds pass without a message (`quick` while it
    has at most `quick_messages` messages), or `max_delay` seconds after its
    first message, whichever comes first; one snapshot is yielded per burst,
    and only if something visible changed, a route cache flush was seen
    (``route_flushes`` grew), or a resync happened. On an overrun the socket
    is replaced and links are dumped again; the snapshot ending that burst
    has ``resync=True``.

    Use with ``contextlib.aclosing(watcher.snapshots())`` so the socket is
    closed when the consumer stops.
    """

    def __init__(
        self,
        *,
        quiet: float = DEFAULT_QUIET,
        max_delay: float = DEFAULT_MAX_DELAY,
        quick: float = DEFAULT_QUICK,
        quick_messages: int = QUICK_MESSAGES,
        rcvbuf: int | None = None,
        socket_factory: Callable[[], LinkSocket] | None = None,
        resync_backoff: tuple[float, float] = RESYNC_BACKOFF,
    ) -> None:
        if not quiet > 0:
            raise ConfigError(f"link watcher: quiet must be > 0 seconds, got {quiet}")
        if not max_delay >= quiet:
            raise ConfigError(
                f"link watcher: max_delay ({max_delay}) must be >= quiet ({quiet})"
            )
        if not 0 < quick <= quiet:
            raise ConfigError(f"link watcher: quick ({quick}) must be > 0 and <= quiet ({quiet})")
        self.quiet = quiet
        self.quick = quick
        self.quick_messages = quick_messages
        self.max_delay = max_delay
        self.stats = WatcherStats()
        self._resync_backoff = resync_backoff
        self._factory: Callable[[], LinkSocket] = (
            socket_factory if socket_factory is not None
            else (lambda: RawLinkSocket(rcvbuf=rcvbuf))
        )

    async def snapshots(self) -> AsyncGenerator[LinkSnapshot, None]:
        loop = asyncio.get_running_loop()
        table = LinkTable()
        reader = _Reader(self._factory, self._resync_backoff)
        generation = 0

        def snapshot(resync: bool) -> LinkSnapshot:
            nonlocal generation
            generation += 1
            self.stats.snapshots_total += 1
            return LinkSnapshot(table.links(), generation, resync, table.route_flushes)

        def apply(batch: Sequence[NlMsg]) -> bool:
            self.stats.events_total += len(batch)
            return table.apply_batch(batch)

        async def resync() -> None:
            self.stats.resyncs_total += 1
            table.replace(await reader.connect())

        try:
            table.replace(await reader.connect())
            yield snapshot(resync=True)
            while True:
                changed = resynced = False
                try:
                    batch = await reader.next(None)
                    assert batch is not None  # no timeout given
                    start = loop.time()
                    changed = apply(batch)
                    count = len(batch)
                except NetlinkOverrunError:
                    start = loop.time()
                    await resync()
                    resynced = True
                    count = self.quick_messages + 1  # an overrun is no small change
                deadline = start + self.max_delay
                while (remaining := deadline - loop.time()) > 0:
                    gap = self.quick if count <= self.quick_messages else self.quiet
                    try:
                        more = await reader.next(min(gap, remaining))
                    except NetlinkOverrunError:
                        await resync()
                        resynced = True
                        count = self.quick_messages + 1
                        continue
                    if more is None:
                        break
                    changed |= apply(more)
                    count += len(more)
                if changed or resynced:
                    yield snapshot(resync=resynced)
        finally:
            await reader.close()


async def current_links(socket_factory: Callable[[], LinkSocket] | None = None,
                        ) -> tuple[Link, ...]:
    """The links of this network namespace now, sorted by name (one dump)."""
    sock = socket_factory() if socket_factory is not None else RawLinkSocket()
    try:
        await sock.open()
        table = LinkTable()
        table.replace(await sock.dump())
        return table.links()
    finally:
        sock.close()
