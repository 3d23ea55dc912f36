"""rtnetlink link messages on the wire: a raw socket and a parser of what offloadd reads.

Why raw: pyroute2 decodes every attribute of every link message into objects
(~3.5 ms a message under emulation), and a burst of 500 veth pairs is 1000
messages. offloadd reads five header fields and three attributes; walking
the attribute headers and skipping the rest costs a few µs.

The parser returns plain dicts keyed the way pyroute2's ``ifinfmsg.get``
answers (``header``/``type``, ``family``, ``index``, ``IFLA_IFNAME``, ...),
so offloadd.kernel.linkmsg reads either without knowing which it got.

A malformed message (bad length, truncated attribute) is skipped, never
half-read: a NEWLINK whose name went missing would read as "not a link of
ours" and remove a live device from the table.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any, Protocol

from offloadd.core.errors import KernelError, NetlinkOverrunError
from offloadd.kernel.linkmsg import decode_name

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
RTNLGRP_LINK = 1  # the group number; its bit in a bind mask is RTMGRP_LINK (0x1)
SO_RCVBUFFORCE = 33

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
LINK_TYPES = (RTM_NEWLINK, RTM_DELLINK)

# include/uapi/linux/if_link.h
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_LINK = 5
IFLA_MASTER = 10
IFLA_LINK_NETNSID = 37
IFLA_LINKINFO = 18
IFLA_NEW_NETNSID = 45
IFLA_INFO_KIND = 1
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED / NLA_F_NET_BYTEORDER

NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
IFINFOMSG = struct.Struct("=BxHiII")  # family, pad, type, index, flags, change
NLA_HDR = struct.Struct("=HH")
S32 = struct.Struct("=i")
U32 = struct.Struct("=I")
LINK_PAYLOAD = NLMSG_HDR.size + IFINFOMSG.size

# pyroute2's default, so the switch does not make overruns more likely; the
# kernel doubles it.
DEFAULT_RCVBUF = 1 << 20
# Dump datagrams are capped near 32 KiB and notifications hold one message
# of a few KiB, so this never truncates; MSG_TRUNC still guards it.
RECV_BUFFER = 64 * 1024

log = logging.getLogger("offloadd")

RtMsg = dict[str, Any]


# -- parsing -----------------------------------------------------------------

class _MalformedError(ValueError):
    """One message cannot be read; its length is still trustworthy."""


def _walk(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    """(type, payload start, payload end) of each attribute in start..end."""
    out = []
    while start + 4 <= end:
        alen, atype = NLA_HDR.unpack_from(data, start)
        if alen < 4 or start + alen > end:
            raise _MalformedError(f"attribute {atype & NLA_TYPE_MASK} of length {alen}")
        out.append((atype & NLA_TYPE_MASK, start + 4, start + alen))
        start += (alen + 3) & ~3
    return out


def _string(data: bytes, start: int, end: int) -> str:
    # Kernel names are bytes; one that is no UTF-8 must neither stop the
    # watcher nor become a writable name (see decode_name).
    return decode_name(data[start:end].split(b"\0", 1)[0])


_U32_NAMES = {IFLA_LINK: "IFLA_LINK", IFLA_MASTER: "IFLA_MASTER",
              IFLA_LINK_NETNSID: "IFLA_LINK_NETNSID"}


def _link(data: bytes, pos: int, end: int, msg: RtMsg) -> None:
    if end - pos < LINK_PAYLOAD:
        raise _MalformedError(f"link message of {end - pos} bytes")
    family, ifi_type, index, flags, change = IFINFOMSG.unpack_from(data, pos + NLMSG_HDR.size)
    msg.update(family=family, ifi_type=ifi_type, index=index, flags=flags, change=change)
    linkinfo: dict[str, str] | None = None
    # The attribute walk inlined: a veth's message has ~40 attributes and
    # this loop is most of the parsing time.
    unpack = NLA_HDR.unpack_from
    a = pos + LINK_PAYLOAD
    while a + 4 <= end:
        alen, atype = unpack(data, a)
        b = a + alen
        if alen < 4 or b > end:
            raise _MalformedError(f"attribute {atype & NLA_TYPE_MASK} of length {alen}")
        atype &= NLA_TYPE_MASK
        if atype == IFLA_IFNAME:
            msg["IFLA_IFNAME"] = _string(data, a + 4, b)
        elif atype == IFLA_MTU:
            if alen < 4 + U32.size:
                raise _MalformedError("IFLA_MTU shorter than 4 bytes")
            msg["IFLA_MTU"] = U32.unpack_from(data, a + 4)[0]
        elif atype == IFLA_ADDRESS:
            msg["IFLA_ADDRESS"] = data[a + 4:b]
        elif atype == IFLA_LINKINFO:
            # Only the kind; IFLA_INFO_SLAVE_KIND names a bridge port's
            # master's kind and is deliberately not read (see linkmsg).
            linkinfo = {}
            for itype, c, d in _walk(data, a + 4, b):
                if itype == IFLA_INFO_KIND:
                    linkinfo["IFLA_INFO_KIND"] = _string(data, c, d)
        elif atype in (IFLA_LINK, IFLA_MASTER, IFLA_LINK_NETNSID):
            if alen < 4 + S32.size:
                raise _MalformedError(f"attribute {atype} shorter than 4 bytes")
            msg[_U32_NAMES[atype]] = S32.unpack_from(data, a + 4)[0]
        elif atype == IFLA_NEW_NETNSID:
            if alen < 4 + S32.size:
                raise _MalformedError("IFLA_NEW_NETNSID shorter than 4 bytes")
            # The kernel puts an s32 in host order (pyroute2 0.9 reads be32).
            msg["IFLA_NEW_NETNSID"] = S32.unpack_from(data, a + 4)[0]
        a += (alen + 3) & ~3
    msg["IFLA_LINKINFO"] = linkinfo


def parse_messages(data: bytes, malformed: list[str] | None = None) -> list[RtMsg]:
    """Every netlink message of one datagram as a dict (see the module docstring).

    RTM_NEWLINK/RTM_DELLINK get the ifinfomsg fields and IFLA_IFNAME,
    IFLA_MTU, IFLA_ADDRESS (bytes), IFLA_LINKINFO (``{"IFLA_INFO_KIND":
    kind}``, ``{}`` without a kind, None when absent), IFLA_LINK,
    IFLA_MASTER, IFLA_LINK_NETNSID and IFLA_NEW_NETNSID; NLMSG_ERROR and
    NLMSG_DONE get ``error`` (0 or a negative errno); any other message only its header.
    A message that cannot be read is left out and, if `malformed` is given,
    a reason is appended to it; the rest of the datagram is still read
    when the message's length allows finding the next one.
    """
    out: list[RtMsg] = []
    pos, n = 0, len(data)
    while pos + NLMSG_HDR.size <= n:
        length, mtype, flags, seq, pid = NLMSG_HDR.unpack_from(data, pos)
        if length < NLMSG_HDR.size or pos + length > n:
            if malformed is not None:
                malformed.append(f"message of length {length} at offset {pos} "
                                 f"in a {n}-byte datagram")
            return out
        end = pos + length
        msg: RtMsg = {"header": {"length": length, "type": mtype, "flags": flags,
                                 "sequence_number": seq, "pid": pid}}
        try:
            if mtype in LINK_TYPES:
                _link(data, pos, end, msg)
            elif mtype in (NLMSG_ERROR, NLMSG_DONE):
                if end - pos < NLMSG_HDR.size + S32.size:
                    if mtype == NLMSG_ERROR:
                        raise _MalformedError("NLMSG_ERROR without an error code")
                    msg["error"] = 0  # old kernels sent an empty NLMSG_DONE
                else:
                    msg["error"] = S32.unpack_from(data, pos + NLMSG_HDR.size)[0]
        except _MalformedError as e:
            if malformed is not None:
                malformed.append(f"type {mtype}: {e}")
        else:
            out.append(msg)
        pos += (length + 3) & ~3
    if pos < n and malformed is not None:
        malformed.append(f"{n - pos} trailing bytes")
    return out


def getlink_dump_request(seq: int) -> bytes:
    """RTM_GETLINK for every link: an ifinfomsg of zeros (AF_UNSPEC), no attributes."""
    return (NLMSG_HDR.pack(LINK_PAYLOAD, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
            + bytes(IFINFOMSG.size))


# -- the socket ----------------------------------------------------------------

class RawSocket(Protocol):
    """The part of a non-blocking netlink socket used here; tests pass a fake."""

    def fileno(self) -> int: ...

    def send(self, data: bytes, /) -> int: ...

    def recv_into(self, buffer: bytearray, nbytes: int = 0, flags: int = 0, /) -> int: ...

    def setsockopt(self, level: int, optname: int, value: int, /) -> None: ...

    def getsockname(self) -> Any: ...

    def close(self) -> None: ...


def open_rtnetlink() -> socket.socket:
    """A bound, non-blocking NETLINK_ROUTE socket in this thread's network namespace."""
    sock = socket.socket(socket.AF_NETLINK,
                         socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                         NETLINK_ROUTE)
    try:
        sock.bind((0, 0))  # the kernel picks the port id
    except OSError:
        sock.close()
        raise
    return sock


def _error(e: OSError, what: str) -> KernelError:
    code = e.errno or errno.EIO
    if code == errno.ENOBUFS:
        return NetlinkOverrunError(code, "netlink receive buffer overrun: link messages lost")
    return KernelError(code, f"rtnetlink link socket: {what}: {e.strerror or e}")


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class RawLinkSocket:
    """LinkSocket over a plain NETLINK_ROUTE socket, in the process's own netns.

    Dump replies and group messages share the socket, as with pyroute2: a
    message belongs to the dump if it carries the dump's sequence number and
    this socket's port id. Group messages read while dumping are kept and
    returned by recv() after it, in order, so a change racing the dump is
    applied after it (offloadd.kernel.links subscribes before dumping for
    exactly that).
    """

    def __init__(self, rcvbuf: int | None = None, *,
                 opener: Callable[[], RawSocket] = open_rtnetlink) -> None:
        self._rcvbuf = DEFAULT_RCVBUF if rcvbuf is None else rcvbuf
        self._opener = opener
        self._sock: RawSocket | None = None
        self._portid = 0
        self._seq = 0
        self._buf = bytearray(RECV_BUFFER)
        self._held: collections.deque[list[RtMsg]] = collections.deque()
        self._waiter: tuple[asyncio.AbstractEventLoop, int, asyncio.Future[None]] | None = None
        self.malformed_total = 0

    async def open(self) -> None:
        try:
            sock = self._opener()
        except OSError as e:
            raise _error(e, "cannot open") from e
        try:
            try:
                # Beyond net.core.rmem_max when privileged; a tiny value (tests
                # provoking ENOBUFS) is treated the same by both options.
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self._rcvbuf)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._rcvbuf)
            name = sock.getsockname()
        except OSError as e:
            sock.close()
            raise _error(e, "cannot set up") from e
        self._portid = int(name[0]) if isinstance(name, tuple) else 0
        self._sock = sock

    def _open_sock(self) -> RawSocket:
        if self._sock is None:
            raise KernelError(errno.EBADF, "link socket is not open")
        return self._sock

    async def bind(self) -> None:
        try:
            self._open_sock().setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, RTNLGRP_LINK)
        except OSError as e:
            raise _error(e, "cannot subscribe to link messages") from e

    async def dump(self) -> list[RtMsg]:
        sock = self._open_sock()
        self._seq += 1
        seq = self._seq
        try:
            sock.send(getlink_dump_request(seq))
        except OSError as e:
            raise _error(e, "link dump request") from e
        links: list[RtMsg] = []
        while True:
            group: list[RtMsg] = []
            done = False
            for msg in self._parse(await self._datagram()):
                header = msg["header"]
                if header["sequence_number"] != seq or header["pid"] != self._portid:
                    if header["type"] in LINK_TYPES:
                        group.append(msg)
                elif header["type"] in LINK_TYPES:
                    links.append(msg)
                elif header["type"] in (NLMSG_DONE, NLMSG_ERROR) and msg["error"]:
                    code = -msg["error"]
                    if code == errno.ENOBUFS:
                        raise NetlinkOverrunError(code, "netlink receive buffer overrun "
                                                        "during the link dump")
                    raise KernelError(code, "rtnetlink link dump failed: "
                                            f"{errno.errorcode.get(code, code)}")
                elif header["type"] == NLMSG_DONE:
                    done = True
            if group:
                self._held.append(group)
            if done:
                return links

    async def recv(self) -> list[RtMsg]:
        while not self._held:
            batch = [m for m in self._parse(await self._datagram())
                     if m["header"]["type"] in LINK_TYPES]
            if batch:
                return batch
        return self._held.popleft()

    def close(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            loop, fd, fut = waiter
            loop.remove_reader(fd)
            if not fut.done():
                fut.set_exception(KernelError(errno.EBADF, "link socket closed"))
        sock, self._sock = self._sock, None
        self._held.clear()
        if sock is not None:
            sock.close()

    def _parse(self, data: bytes) -> list[RtMsg]:
        bad: list[str] = []
        msgs = parse_messages(data, bad)
        if bad:
            if not self.malformed_total:
                log.warning("skipping malformed rtnetlink message(s) (logged once per "
                            "socket): %s", "; ".join(bad))
            self.malformed_total += len(bad)
        return msgs

    async def _datagram(self) -> bytes:
        while True:
            sock = self._open_sock()
            try:
                n = sock.recv_into(self._buf, len(self._buf), socket.MSG_TRUNC)
            except BlockingIOError:
                await self._readable(sock)
                continue
            except OSError as e:
                raise _error(e, "receive") from e
            if n > len(self._buf):
                # Its messages are lost all the same: the caller re-dumps.
                raise NetlinkOverrunError(errno.ENOBUFS, f"rtnetlink datagram of {n} bytes "
                                                         f"exceeds the {len(self._buf)}-byte "
                                                         "buffer: link messages lost")
            return bytes(memoryview(self._buf)[:n])

    async def _readable(self, sock: RawSocket) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        fd = sock.fileno()
        loop.add_reader(fd, _wake, fut)
        self._waiter = (loop, fd, fut)
        try:
            await fut
        finally:
            # close() may have unregistered it already, and the fd number may
            # belong to another socket by now: only undo our own registration.
            if self._waiter is not None and self._waiter[2] is fut:
                self._waiter = None
                loop.remove_reader(fd)
