"""How many elements an nf_tables set holds: one raw set-element dump, headers only.

Why raw netlink: libnftables lists a set by decoding and printing every
element (10+ s for 100k+ gate elements under the lab's emulation); a count
needs only how many NFTA_LIST_ELEM attributes the kernel sends. Walking their
headers costs about 0.2 µs each and builds nothing per element: a million
are counted in 0.2 s of CPU (tests/unit/test_setcount.py, synthetic dumps).

Why a commit does not void a count: the kernel flags a dump during which any
commit in the namespace happened (NLM_F_DUMP_INTR on its messages), but a
count is a snapshot of a set the packet path changes anyway; what would void
it is the set replaced meanwhile (a re-validation replaces the gate's sets),
which its handle, read before and after, tells. Only then, or when the kernel
ends the dump with EINTR (no count at all), is the dump asked for again, a
bounded number of times. A long count on a busy router thus completes even
though every attach commits.

Why a pause after each datagram (``after_datagram``, given the CPU seconds
the kernel's walk for it took): the caller's pacing (offloadd.service.gatecount)
keeps a count that takes minutes of kernel time from taking the CPU meanwhile.

The kernel's side is not free: for each datagram it walks a hash set from
its first element again, skipping those already sent, so a million elements
cost it more than they cost offloadd. Hence a count a minute
(offloadd.service.gatecount), never one per scrape. Expired elements the
kernel has not collected yet are not sent, so not counted. A count while the
set's hash is resized (it grows as it fills) walks a changed order from one
datagram to the next and may miss or repeat elements (7.3.4, right after
2 x 62.5k were added: 104,406 of 125,000; counted again a minute later,
all of them): a count says how full the set is, not an exact figure.

A set (or its table) that does not exist counts as None, not as an error:
the caller knows whether it expected one. The dump needs CAP_NET_ADMIN and
runs in the calling thread's network namespace; it shares nothing with a
libnftables context, so any thread may count.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from collections.abc import Callable, Mapping

from offloadd.core.errors import KernelError
from offloadd.kernel.ctnetlink import (
    DUMP_TIMEOUT_S,
    NFGEN_HDR,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERR_CODE,
    NLMSG_ERROR,
    NetlinkSocket,
    SocketFactory,
    open_netfilter,
)
from offloadd.kernel.nftwatch import FAMILIES
from offloadd.kernel.nlattr import NLA_HDR, NLA_TYPE_MASK, NLMSG_HDR

NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWSET = 9
NFT_MSG_GETSET = 10
NFT_MSG_NEWSETELEM = 12
NFT_MSG_GETSETELEM = 13
NEWSETELEM = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM
GETSETELEM = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM
NEWSET = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSET
GETSET = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSET
NFTA_SET_TABLE = 1
NFTA_SET_NAME = 2
NFTA_SET_HANDLE = 16
U64_BE = struct.Struct(">Q")
NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_LIST_ELEM = 1
NLM_F_DUMP_INTR = 0x10
# Where a message's attributes start: netlink header, then nfgenmsg.
PAYLOAD = NLMSG_HDR.size + NFGEN_HDR.size
# nft's family names -> NFPROTO_* (inet 1, ip 2, ip6 10, ...).
NFPROTO: Mapping[str, int] = {name: num for num, name in FAMILIES.items()}

# The kernel caps a dump datagram near 32 KiB (netlink's max_recvmsg_len);
# the margin costs one allocation per count, and MSG_TRUNC still catches a
# kernel that sends more.
RECV_BUFFER = 1 << 20
# Dumps asked for again after one the kernel could not finish (EINTR) or one
# during which the set was replaced: a set replaced during every one of them
# is a failure of this count, not a reason to spin.
INTR_RETRIES = 3
# A set's own description (its handle among a few attributes) fits easily.
SET_BUFFER = 1 << 16


class SetCountError(KernelError):
    """A set's elements cannot be counted (no CAP_NET_ADMIN, no nf_tables, a
    refused, broken or ever-interrupted dump)."""


class _InterruptedError(SetCountError):
    """The ruleset changed during the dump: ``total`` is what it counted
    (None: the kernel ended it with EINTR, nothing to keep)."""

    def __init__(self, message: str, total: int | None = None) -> None:
        super().__init__(message)
        self.total = total


def open_nfnetlink() -> NetlinkSocket:
    """A netfilter netlink socket (failures are SetCountError)."""
    return open_netfilter(SetCountError)


def _string_attr(kind: int, value: str) -> bytes:
    raw = value.encode() + b"\0"
    attr = NLA_HDR.pack(NLA_HDR.size + len(raw), kind) + raw
    return attr + b"\0" * (-len(attr) % 4)


def dump_request(family: int, table: str, name: str, seq: int = 1) -> bytes:
    """An NFT_MSG_GETSETELEM dump request for set ``name`` of ``table``."""
    attrs = (_string_attr(NFTA_SET_ELEM_LIST_TABLE, table)
             + _string_attr(NFTA_SET_ELEM_LIST_SET, name))
    return (NLMSG_HDR.pack(PAYLOAD + len(attrs), GETSETELEM, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
            + NFGEN_HDR.pack(family, 0, 0) + attrs)


def handle_request(family: int, table: str, name: str, seq: int = 1) -> bytes:
    """An NFT_MSG_GETSET request for set ``name`` of ``table`` (not a dump)."""
    attrs = _string_attr(NFTA_SET_TABLE, table) + _string_attr(NFTA_SET_NAME, name)
    return (NLMSG_HDR.pack(PAYLOAD + len(attrs), GETSET, NLM_F_REQUEST, seq, 0)
            + NFGEN_HDR.pack(family, 0, 0) + attrs)


def _error_line(code: int, what: str) -> str:
    if code == errno.EPERM:
        return (f"counting the elements of {what} needs CAP_NET_ADMIN: run offloadd as "
                "root or grant CAP_NET_ADMIN (EPERM)")
    if code in (errno.EOPNOTSUPP, errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT):
        return (f"nf_tables is not available ({errno.errorcode.get(code, code)}): "
                "load nf_tables (modprobe nf_tables)")
    return (f"the kernel refused the element dump of {what}: "
            f"{errno.errorcode.get(code, str(code))}")


def count_list(buf: memoryview, start: int, end: int) -> int:
    """The NFTA_LIST_ELEM attributes between byte offsets ``start`` and ``end``
    of a datagram seen as native u16s (``buf``); both offsets are 4-aligned, as
    every attribute is. Stops at a malformed one.

    The hot loop of a count: two u16 reads per element, no slice, no object."""
    n = 0
    off = start
    while off + 4 <= end:
        i = off >> 1
        alen = buf[i]
        if alen < 4 or off + alen > end:
            break
        if buf[i + 1] & NLA_TYPE_MASK == NFTA_LIST_ELEM:
            n += 1
        off += (alen + 3) & ~3
    return n


def _elements_in(words: memoryview, data: bytearray, start: int, end: int) -> int:
    """The elements one NEWSETELEM message (attributes start..end) carries."""
    off = start
    while off + NLA_HDR.size <= end:
        alen, kind = NLA_HDR.unpack_from(data, off)
        if alen < NLA_HDR.size or off + alen > end:
            raise SetCountError("malformed attribute in the set element dump")
        if kind & NLA_TYPE_MASK == NFTA_SET_ELEM_LIST_ELEMENTS:
            return count_list(words, off + NLA_HDR.size, off + alen)
        off += (alen + 3) & ~3
    return 0


def _recv(sock: NetlinkSocket, buf: bytearray, what: str) -> int:
    try:
        n = sock.recv_into(buf, 0, socket.MSG_TRUNC)
    except TimeoutError as e:
        raise SetCountError(f"the element dump of {what} stalled for "
                            f"{DUMP_TIMEOUT_S:.0f} s") from e
    except OSError as e:
        raise SetCountError(_error_line(e.errno or 0, what)) from e
    if n > len(buf):
        raise SetCountError(f"element dump datagram of {n} bytes exceeds the "
                            f"{len(buf)}-byte buffer")
    return n


def _failed(code: int, what: str) -> int | None:
    """An error answer (errno ``code`` > 0): None for an absent set; raises otherwise."""
    if code == errno.ENOENT:
        return None
    if code == errno.EINTR:
        raise _InterruptedError(f"the ruleset changed during the element dump of {what}")
    raise SetCountError(_error_line(code, what))


def _set_handle(factory: SocketFactory, request: bytes, what: str) -> int | None:
    """The set's handle (None: no such set or table): one request and its answer."""
    sock = factory()
    buf = bytearray(SET_BUFFER)
    try:
        try:
            sock.send(request)
        except OSError as e:
            raise SetCountError(_error_line(e.errno or 0, what)) from e
        n = _recv(sock, buf, what)
        if n < NLMSG_HDR.size:
            raise SetCountError(f"a truncated answer describing {what}")
        length, mtype, _flags, _seq, _pid = NLMSG_HDR.unpack_from(buf, 0)
        if mtype == NLMSG_ERROR and length >= NLMSG_HDR.size + NLMSG_ERR_CODE.size:
            code = -NLMSG_ERR_CODE.unpack_from(buf, NLMSG_HDR.size)[0]
            if code == errno.ENOENT:
                return None
            raise SetCountError(_error_line(code, what))
        if mtype != NEWSET or length > n:
            raise SetCountError(f"an unexpected answer describing {what} (type {mtype:#x})")
        off = PAYLOAD
        while off + NLA_HDR.size <= length:
            alen, kind = NLA_HDR.unpack_from(buf, off)
            if alen < NLA_HDR.size or off + alen > length:
                break
            if kind & NLA_TYPE_MASK == NFTA_SET_HANDLE and alen >= NLA_HDR.size + U64_BE.size:
                handle: int = U64_BE.unpack_from(buf, off + NLA_HDR.size)[0]
                return handle
            off += (alen + 3) & ~3
        raise SetCountError(f"the kernel's description of {what} carries no handle")
    finally:
        sock.close()


def _dump(factory: SocketFactory, request: bytes, what: str,
          after_datagram: Callable[[float], None] | None = None,
          cpu: Callable[[], float] = time.thread_time) -> int | None:
    """One dump on a fresh socket (nothing of an interrupted one is left to read)."""
    sock = factory()
    buf = bytearray(RECV_BUFFER)
    words = memoryview(buf).cast("H")
    try:
        try:
            sock.send(request)
        except OSError as e:
            raise SetCountError(_error_line(e.errno or 0, what)) from e
        total = 0
        interrupted = False
        while True:
            c0 = cpu()
            # The kernel walks the set for the next datagram within this call.
            n = _recv(sock, buf, what)
            walked = cpu() - c0
            off = 0
            while off + NLMSG_HDR.size <= n:
                length, mtype, flags, _seq, _pid = NLMSG_HDR.unpack_from(buf, off)
                if length < NLMSG_HDR.size or off + length > n:
                    raise SetCountError("malformed netlink message in the set element dump")
                interrupted = interrupted or bool(flags & NLM_F_DUMP_INTR)
                if mtype == NEWSETELEM:
                    total += _elements_in(words, buf, off + PAYLOAD, off + length)
                elif mtype in (NLMSG_DONE, NLMSG_ERROR):
                    # DONE carries the dump's own errno (0, or e.g. -ENOENT for
                    # a set deleted mid-dump); ERROR a refused request's.
                    code = (-NLMSG_ERR_CODE.unpack_from(buf, off + NLMSG_HDR.size)[0]
                            if length >= NLMSG_HDR.size + NLMSG_ERR_CODE.size else 0)
                    if code:
                        return _failed(code, what)
                    if mtype == NLMSG_DONE:
                        if interrupted:
                            raise _InterruptedError(
                                f"the ruleset changed during the element dump of {what}",
                                total)
                        return total
                off += (length + 3) & ~3
            if after_datagram is not None:
                after_datagram(walked)
    finally:
        words.release()
        sock.close()


def count_elements(family: str, table: str, name: str, *,
                   factory: SocketFactory = open_nfnetlink,
                   retries: int = INTR_RETRIES,
                   after_datagram: Callable[[float], None] | None = None,
                   cpu: Callable[[], float] = time.thread_time) -> int | None:
    """The elements set ``name`` of table ``family table`` holds now; None if
    the set or the table does not exist. ``after_datagram`` is called after
    each datagram but the last with the CPU seconds (``cpu``: this thread's)
    its receipt took; whatever it raises ends the count.

    Raises SetCountError if the dump fails, or if the set was replaced (or the
    kernel gave up) during each of 1 + ``retries`` dumps."""
    nfproto = NFPROTO.get(family)
    if nfproto is None:
        raise SetCountError(f"unknown nftables family {family!r}")
    what = f"set {family} {table} {name}"
    request = dump_request(nfproto, table, name)
    describe = handle_request(nfproto, table, name)
    last: _InterruptedError | None = None
    for _attempt in range(retries + 1):
        before = _set_handle(factory, describe, what)
        if before is None:
            return None
        try:
            return _dump(factory, request, what, after_datagram, cpu)
        except _InterruptedError as e:
            if e.total is not None and _set_handle(factory, describe, what) == before:
                # Others' commits, not this set replaced: the count holds.
                return e.total
            last = e
    raise SetCountError(f"{last}, {retries + 1} times in a row") from None
