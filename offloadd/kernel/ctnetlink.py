"""ctnetlink on the wire: the dump request, the dump itself, decoding an entry.

Why raw netlink: a gateway can hold a million entries; pyroute2 builds an
object per entry (≈160-590 µs each), while walking message headers costs a
few µs and no memory per entry. Since Linux 5.15 a dump request may carry
CTA_STATUS + CTA_STATUS_MASK and the kernel sends only matching entries;
older kernels ignore those attributes, so callers check each entry's
CTA_STATUS too. Offloaded entries have no CTA_TIMEOUT and no CTA_PROTOINFO;
nothing here expects either.

Why apart from offloadd.kernel.conntrack: the byte layout and the socket
handling are one concern (tested against crafted datagrams), what to count
or list is another; each stays small enough to read whole.
"""

from __future__ import annotations

import contextlib
import errno
import platform
import re
import socket
import struct
from collections.abc import Callable, Generator, Iterator
from typing import Protocol

from offloadd.core.errors import KernelError
from offloadd.core.flows import FlowTuple, OffloadedFlow

# netlink / nfnetlink / ctnetlink wire constants
NETLINK_NETFILTER = 12
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
CT_NEW = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW
CT_GET = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET

CTA_TUPLE_ORIG = 1
CTA_TUPLE_REPLY = 2
CTA_STATUS = 3
CTA_TIMEOUT = 7
CTA_USE = 11
CTA_COUNTERS_ORIG = 9
CTA_COUNTERS_REPLY = 10
CTA_ID = 12
CTA_HELP = 5
CTA_HELP_NAME = 1
CTA_STATUS_MASK = 26
CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES = 1, 2
CTA_COUNTERS32_PACKETS, CTA_COUNTERS32_BYTES = 3, 4
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED / NLA_F_NET_BYTEORDER

NLMSG_HDR = struct.Struct("=IHHII")
LEN_TYPE = struct.Struct("=IH")  # the part of a netlink header a count needs
NFGEN_HDR = struct.Struct("=BBH")  # family, version, res_id (be16)
NLA_HDR = struct.Struct("=HH")
BE16 = struct.Struct(">H")
BE32 = struct.Struct(">I")
BE64 = struct.Struct(">Q")
NLMSG_ERR_CODE = struct.Struct("=i")
PAYLOAD = NLMSG_HDR.size + NFGEN_HDR.size  # where a ctnetlink message's attributes start

# A dump skb is at most ~32 KiB (the kernel caps it), so 64 KiB always holds
# one whole datagram; MSG_TRUNC still guards against a kernel that sends more.
RECV_BUFFER = 64 * 1024
DUMP_TIMEOUT_S = 30.0
STATUS_FILTER_SINCE = (5, 15)


class ConntrackError(KernelError):
    """conntrack cannot be read (no CAP_NET_ADMIN, ctnetlink missing, socket failure)."""


class NetlinkSocket(Protocol):
    """The part of a datagram socket the dump uses; tests pass a fake."""

    def send(self, data: bytes, /) -> int: ...

    def recv_into(self, buffer: bytearray, nbytes: int = 0, flags: int = 0, /) -> int: ...

    def close(self) -> None: ...


SocketFactory = Callable[[], NetlinkSocket]


# -- the raw dump -------------------------------------------------------------

def kernel_filters_status(release: str | None = None) -> bool:
    """True if this kernel honours CTA_STATUS/CTA_STATUS_MASK in a dump (>= 5.15)."""
    m = re.match(r"(\d+)\.(\d+)", release if release is not None else platform.release())
    return m is not None and (int(m[1]), int(m[2])) >= STATUS_FILTER_SINCE


def open_netfilter(error: type[KernelError] = ConntrackError) -> NetlinkSocket:
    """A NETLINK_NETFILTER socket in the calling thread's network namespace;
    ``error``: what a failure raises (the caller's domain: conntrack, sets)."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             NETLINK_NETFILTER)
    except OSError as e:
        raise error(f"cannot open a netfilter netlink socket ({e.strerror}); "
                    "is nfnetlink available in this kernel?") from e
    try:
        sock.settimeout(DUMP_TIMEOUT_S)
        sock.bind((0, 0))
    except OSError as e:
        sock.close()
        raise error(f"cannot bind a netfilter netlink socket ({e.strerror})") from e
    return sock


def open_ctnetlink() -> NetlinkSocket:
    """A ctnetlink socket (failures are ConntrackError)."""
    return open_netfilter(ConntrackError)


def dump_request(family: int, status: int = 0, mask: int = 0, seq: int = 1) -> bytes:
    """An IPCTNL_MSG_CT_GET dump request; mask 0 asks for every entry."""
    attrs = b""
    if mask:
        for kind, value in ((CTA_STATUS, status & mask), (CTA_STATUS_MASK, mask)):
            attrs += NLA_HDR.pack(NLA_HDR.size + 4, kind) + BE32.pack(value)
    length = PAYLOAD + len(attrs)
    return (NLMSG_HDR.pack(length, CT_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
            + NFGEN_HDR.pack(family, 0, 0) + attrs)


def _error_line(code: int) -> str:
    if code == errno.EPERM:
        return ("reading conntrack needs CAP_NET_ADMIN: run offloadd as root or grant "
                "CAP_NET_ADMIN (EPERM)")
    if code in (errno.EOPNOTSUPP, errno.EPROTONOSUPPORT, errno.ENOENT):
        return (f"ctnetlink is not available ({errno.errorcode.get(code, code)}): "
                "load nf_conntrack_netlink (modprobe nf_conntrack_netlink)")
    return f"conntrack dump refused by the kernel: {errno.errorcode.get(code, code)}"


@contextlib.contextmanager
def dump(family: int, status: int, mask: int,
          factory: SocketFactory) -> Iterator[NetlinkSocket]:
    """A socket on which the dump request was sent; closed afterwards."""
    sock = factory()
    try:
        try:
            sock.send(dump_request(family, status, mask))
        except OSError as e:
            raise ConntrackError(_error_line(e.errno or 0)) from e
        yield sock
    finally:
        sock.close()


def control(buf: bytearray, off: int, mtype: int) -> bool:
    """For a message that is no entry: True at the dump's end; raises on an error."""
    if mtype == NLMSG_DONE:
        return True
    if mtype == NLMSG_ERROR:
        code = -NLMSG_ERR_CODE.unpack_from(buf, off + NLMSG_HDR.size)[0]
        if code:
            raise ConntrackError(_error_line(code))
    return False


def entries(family: int, status: int, mask: int,
             factory: SocketFactory
             ) -> Generator[tuple[bytearray, int, int, bool], None, None]:
    """Yields (buffer, attrs_start, msg_end, first_in_datagram) per conntrack entry.

    The buffer is reused for the next datagram: a consumer reads what it needs
    before asking for the next entry and keeps no reference to it.
    """
    with dump(family, status, mask, factory) as sock:
        buf = bytearray(RECV_BUFFER)
        while True:
            n = recv(sock, buf)
            off = 0
            first = True
            while off + NLMSG_HDR.size <= n:
                length, mtype, _flags, _seq, _pid = NLMSG_HDR.unpack_from(buf, off)
                if length < NLMSG_HDR.size or off + length > n:
                    raise ConntrackError("malformed netlink message in the conntrack dump")
                end = off + length
                if mtype == CT_NEW:
                    yield buf, off + PAYLOAD, end, first
                    first = False
                elif control(buf, off, mtype):
                    return
                off += (length + 3) & ~3


def recv(sock: NetlinkSocket, buf: bytearray) -> int:
    """One datagram of a dump into ``buf``; its length."""
    try:
        n = sock.recv_into(buf, 0, socket.MSG_TRUNC)
    except TimeoutError as e:
        raise ConntrackError(f"conntrack dump stalled for {DUMP_TIMEOUT_S:.0f} s") from e
    except OSError as e:
        raise ConntrackError(_error_line(e.errno or 0)) from e
    if n > len(buf):
        raise ConntrackError(f"conntrack dump datagram of {n} bytes exceeds the "
                             f"{len(buf)}-byte buffer")
    return n


def _find_attr(buf: bytearray | bytes, start: int, end: int, kind: int) -> tuple[int, int]:
    """(payload offset, payload length) of the first attribute `kind`, or (-1, 0)."""
    while start + NLA_HDR.size <= end:
        alen, atype = NLA_HDR.unpack_from(buf, start)
        if alen < NLA_HDR.size:
            break
        if atype & NLA_TYPE_MASK == kind:
            return start + NLA_HDR.size, alen - NLA_HDR.size
        start += (alen + 3) & ~3
    return -1, 0


def entry_status(buf: bytearray | bytes, start: int, end: int) -> int | None:
    off, alen = _find_attr(buf, start, end, CTA_STATUS)
    return BE32.unpack_from(buf, off)[0] if off >= 0 and alen >= 4 else None


def attr_u32(buf: bytearray | bytes, start: int, end: int, kind: int) -> int | None:
    off, alen = _find_attr(buf, start, end, kind)
    return BE32.unpack_from(buf, off)[0] if off >= 0 and alen >= 4 else None


# -- decoding an entry ---------------------------------------------------------

def _tuple(buf: bytearray | bytes, start: int, end: int, family: int) -> FlowTuple:
    src = dst = ""
    proto = sport = dport = 0
    ip_off, ip_len = _find_attr(buf, start, end, CTA_TUPLE_IP)
    if ip_off >= 0:
        ip_end = ip_off + ip_len
        v6 = family == socket.AF_INET6
        size = 16 if v6 else 4
        for kind in ((CTA_IP_V6_SRC, CTA_IP_V6_DST) if v6 else (CTA_IP_V4_SRC, CTA_IP_V4_DST)):
            off, alen = _find_attr(buf, ip_off, ip_end, kind)
            if off >= 0 and alen >= size:
                addr = socket.inet_ntop(family, bytes(buf[off:off + size]))
                if kind in (CTA_IP_V4_SRC, CTA_IP_V6_SRC):
                    src = addr
                else:
                    dst = addr
    p_off, p_len = _find_attr(buf, start, end, CTA_TUPLE_PROTO)
    if p_off >= 0:
        p_end = p_off + p_len
        off, alen = _find_attr(buf, p_off, p_end, CTA_PROTO_NUM)
        if off >= 0 and alen >= 1:
            proto = buf[off]
        off, alen = _find_attr(buf, p_off, p_end, CTA_PROTO_SRC_PORT)
        if off >= 0 and alen >= 2:
            sport = BE16.unpack_from(buf, off)[0]
        off, alen = _find_attr(buf, p_off, p_end, CTA_PROTO_DST_PORT)
        if off >= 0 and alen >= 2:
            dport = BE16.unpack_from(buf, off)[0]
    return FlowTuple(src, dst, proto, sport, dport)


def _counters(buf: bytearray | bytes, start: int, end: int, kind: int
              ) -> tuple[int | None, int | None]:
    off, alen = _find_attr(buf, start, end, kind)
    if off < 0:
        return None, None
    out: list[int | None] = []
    for k64, k32 in ((CTA_COUNTERS_PACKETS, CTA_COUNTERS32_PACKETS),
                     (CTA_COUNTERS_BYTES, CTA_COUNTERS32_BYTES)):
        a, n = _find_attr(buf, off, off + alen, k64)
        if a >= 0 and n >= 8:
            out.append(BE64.unpack_from(buf, a)[0])
            continue
        a, n = _find_attr(buf, off, off + alen, k32)
        out.append(BE32.unpack_from(buf, a)[0] if a >= 0 and n >= 4 else None)
    return out[0], out[1]


def parse_entry(buf: bytearray | bytes, start: int, end: int, family: int) -> OffloadedFlow:
    """One ctnetlink entry's attributes (start..end) as an OffloadedFlow."""
    empty = FlowTuple("", "", 0, 0, 0)
    tuples = []
    for kind in (CTA_TUPLE_ORIG, CTA_TUPLE_REPLY):
        off, alen = _find_attr(buf, start, end, kind)
        tuples.append(_tuple(buf, off, off + alen, family) if off >= 0 else empty)
    id_off, id_len = _find_attr(buf, start, end, CTA_ID)
    o_pk, o_by = _counters(buf, start, end, CTA_COUNTERS_ORIG)
    r_pk, r_by = _counters(buf, start, end, CTA_COUNTERS_REPLY)
    helper = None
    h_off, h_len = _find_attr(buf, start, end, CTA_HELP)
    if h_off >= 0:
        n_off, n_len = _find_attr(buf, h_off, h_off + h_len, CTA_HELP_NAME)
        helper = (bytes(buf[n_off:n_off + n_len]).rstrip(b"\0").decode(errors="replace")
                  if n_off >= 0 else "?")
    return OffloadedFlow(
        timeout=attr_u32(buf, start, end, CTA_TIMEOUT), use=attr_u32(buf, start, end, CTA_USE),
        helper=helper,
        id=BE32.unpack_from(buf, id_off)[0] if id_off >= 0 and id_len >= 4 else 0,
        family=family, status=entry_status(buf, start, end) or 0,
        orig=tuples[0], reply=tuples[1],
        orig_packets=o_pk, orig_bytes=o_by, reply_packets=r_pk, reply_bytes=r_by)
