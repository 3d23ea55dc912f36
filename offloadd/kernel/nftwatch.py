"""Wakes the daemon when anything in nftables changes, in any table.

offloadd's rule must stay after every other forward base chain: when an admin
adds or changes a forward chain in their own table, offloadd has to move its
chain's priority at once, not at the next link event. The kernel multicasts
every committed nf_tables change to NFNLGRP_NFTABLES; the messages are not
parsed — any of them just asks for a reconcile, which reads the full state.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import AsyncIterator

from offloadd.core.errors import KernelError

NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7
QUIET_S = 0.1


class NftEvents:
    """Yields once per burst of nf_tables changes (after QUIET_S without more)."""

    def __init__(self, quiet: float = QUIET_S) -> None:
        self.quiet = quiet
        self.events_total = 0

    def _open(self) -> socket.socket:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                                 NETLINK_NETFILTER)
            sock.bind((0, 1 << (NFNLGRP_NFTABLES - 1)))
        except OSError as e:
            raise KernelError(e.errno or 0, f"cannot watch nftables changes: {e.strerror}") from e
        return sock

    async def changes(self) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        sock = self._open()
        try:
            while True:
                await self._recv(loop, sock)
                while True:  # drain the burst
                    try:
                        await asyncio.wait_for(self._recv(loop, sock), self.quiet)
                    except TimeoutError:
                        break
                yield None
        finally:
            sock.close()

    async def _recv(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        try:
            await loop.sock_recv(sock, 1 << 16)
        except OSError as e:
            # An overrun only means changes were missed: a reconcile reads
            # everything anyway, so it counts as a change.
            if e.errno != errno.ENOBUFS:
                raise KernelError(e.errno or 0, f"nftables change watch: {e.strerror}") from e
        self.events_total += 1
