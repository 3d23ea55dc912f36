"""Reports every committed nf_tables transaction, in any table, as it happens.

Two readers need it. The reconcile: offloadd's rule must stay after every
other forward base chain, so when an admin adds or changes a forward chain
offloadd moves its own at once, not at the next link event. And the policy
re-validation (offloadd.core.revalidate): an admin's new drop rule or
blocklist element must reach flows that are already offloaded.

The kernel multicasts each committed change to NFNLGRP_NFTABLES: one message
per object (table, chain, rule, set, element, object, flowtable) naming its
table, then NFT_MSG_NEWGEN with the committing process's pid and name. Only
those few attributes are read, from the raw messages (a blocklist burst is
thousands of element messages; no per-message objects beyond the summary).
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
from collections.abc import AsyncIterator, Iterator

from offloadd.core.errors import KernelError
from offloadd.core.revalidate import NftChanges, ObjectKind, TableChange, Transaction, Verb
from offloadd.kernel.nlattr import NLMSG_HDR, attrs

NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN = 15
NFTA_GEN_PROC_PID = 2
NFTA_GEN_PROC_NAME = 3
NFTA_TABLE = 1  # NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, ... all are 1
NFGENMSG = 4
RCVBUF = 8 << 20  # a burst of element messages must not overrun it

# NFT_MSG_* of the object messages: NEW*, DEL* and (6.3+) DESTROY*.
MESSAGES: dict[int, tuple[ObjectKind, Verb]] = {
    0: (ObjectKind.TABLE, Verb.ADD), 2: (ObjectKind.TABLE, Verb.DELETE),
    3: (ObjectKind.CHAIN, Verb.ADD), 5: (ObjectKind.CHAIN, Verb.DELETE),
    6: (ObjectKind.RULE, Verb.ADD), 8: (ObjectKind.RULE, Verb.DELETE),
    9: (ObjectKind.SET, Verb.ADD), 11: (ObjectKind.SET, Verb.DELETE),
    12: (ObjectKind.ELEMENT, Verb.ADD), 14: (ObjectKind.ELEMENT, Verb.DELETE),
    18: (ObjectKind.OBJECT, Verb.ADD), 20: (ObjectKind.OBJECT, Verb.DELETE),
    22: (ObjectKind.FLOWTABLE, Verb.ADD), 24: (ObjectKind.FLOWTABLE, Verb.DELETE),
    26: (ObjectKind.TABLE, Verb.DELETE), 27: (ObjectKind.CHAIN, Verb.DELETE),
    28: (ObjectKind.RULE, Verb.DELETE), 29: (ObjectKind.SET, Verb.DELETE),
    30: (ObjectKind.ELEMENT, Verb.DELETE), 31: (ObjectKind.OBJECT, Verb.DELETE),
    32: (ObjectKind.FLOWTABLE, Verb.DELETE),
}
FAMILIES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}


def _string(value: bytes) -> str:
    return value.split(b"\0", 1)[0].decode("utf-8", "replace")


class TransactionReader:
    """Turns raw multicast datagrams into transactions (an object message's
    transaction ends with the NEWGEN message that follows it)."""

    def __init__(self) -> None:
        self._open: list[TableChange] = []

    def feed(self, data: bytes) -> list[Transaction]:
        done: list[Transaction] = []
        pos = 0
        while pos + NLMSG_HDR.size <= len(data):
            length, mtype, _flags, _seq, _pid = NLMSG_HDR.unpack_from(data, pos)
            if length < NLMSG_HDR.size:
                break
            end = min(pos + length, len(data))
            if mtype >> 8 == NFNL_SUBSYS_NFTABLES and end - pos >= NLMSG_HDR.size + NFGENMSG:
                family = data[pos + NLMSG_HDR.size]
                found = attrs(data, pos + NLMSG_HDR.size + NFGENMSG, end)
                self._message(mtype & 0xFF, family, found, done)
            pos += (length + 3) & ~3
        return done

    def _message(self, msg: int, family: int, attrs: Iterator[tuple[int, bytes]],
                 done: list[Transaction]) -> None:
        if msg == NFT_MSG_NEWGEN:
            pid, name = 0, ""
            for kind, value in attrs:
                if kind == NFTA_GEN_PROC_PID and len(value) >= 4:
                    pid = struct.unpack_from(">I", value)[0]
                elif kind == NFTA_GEN_PROC_NAME:
                    name = _string(value)
            done.append(Transaction(tuple(self._open), pid, name))
            self._open = []
            return
        what = MESSAGES.get(msg)
        if what is None:
            return
        table = next((_string(v) for k, v in attrs if k == NFTA_TABLE), "")
        self._open.append(TableChange(what[0], what[1], FAMILIES.get(family, str(family)),
                                      table))


class NftEvents:
    """Yields what each read of the nf_tables multicast group brought."""

    def _open(self) -> socket.socket:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                                 NETLINK_NETFILTER)
            try:
                sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE (root)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.bind((0, 1 << (NFNLGRP_NFTABLES - 1)))
        except OSError as e:
            raise KernelError(e.errno or 0, f"cannot watch nftables changes: {e.strerror}") from e
        return sock

    async def changes(self) -> AsyncIterator[NftChanges]:
        loop = asyncio.get_running_loop()
        sock = self._open()
        reader = TransactionReader()
        try:
            # "Watching from now on": a consumer that restarted the watcher
            # knows from here that what it missed meanwhile is behind it.
            yield NftChanges(())
            while True:
                chunks, overrun = [await self._recv(loop, sock)], False
                while True:  # and whatever else is already queued, without waiting
                    try:
                        chunks.append(sock.recv(1 << 16))
                    except BlockingIOError:
                        break
                    except OSError as e:
                        if e.errno != errno.ENOBUFS:
                            raise KernelError(e.errno or 0,
                                              f"nftables change watch: {e.strerror}") from e
                        overrun = True
                done = [tx for chunk in chunks if chunk for tx in reader.feed(chunk)]
                overrun = overrun or chunks[0] == b""
                if done or overrun:
                    yield NftChanges(tuple(done), overrun)
        finally:
            sock.close()

    async def _recv(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
        try:
            return await loop.sock_recv(sock, 1 << 16)
        except OSError as e:
            # An overrun only means changes were missed: the caller treats it
            # as a change by someone else (a reconcile reads everything anyway).
            if e.errno != errno.ENOBUFS:
                raise KernelError(e.errno or 0, f"nftables change watch: {e.strerror}") from e
            return b""

