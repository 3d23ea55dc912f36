"""conntrack edge: settings the offload rules depend on, and offloaded-flow counts.

``ct packets > N`` (the elephant threshold) reads conntrack's accounting
extension, which the kernel only attaches to new connections while
``nf_conntrack_acct`` is on in that network namespace.

Counting talks ctnetlink over a raw netlink socket because a gateway can hold
a million entries: pyroute2 builds an object per entry (≈160-590 µs each),
while walking message headers costs a few µs and no memory per entry. Since
Linux 5.15 a dump request may carry CTA_STATUS + CTA_STATUS_MASK and the
kernel sends only matching entries; older kernels ignore those attributes,
so there each entry's CTA_STATUS is checked instead. Offloaded entries have
no CTA_TIMEOUT and no CTA_PROTOINFO; nothing here expects either.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import platform
import re
import socket
import struct
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from offloadd.core.errors import KernelError

ACCT = Path("/proc/sys/net/netfilter/nf_conntrack_acct")
CT_COUNT = Path("/proc/sys/net/netfilter/nf_conntrack_count")
CT_MAX = Path("/proc/sys/net/netfilter/nf_conntrack_max")
# Only the initial namespace has this one; a child may lack both max files.
CT_MAX_INIT = Path("/proc/sys/net/nf_conntrack_max")

# include/uapi/linux/netfilter/nf_conntrack_common.h
IPS_SEEN_REPLY = 1 << 1
IPS_ASSURED = 1 << 2
IPS_CONFIRMED = 1 << 3
IPS_OFFLOAD = 1 << 14
IPS_HW_OFFLOAD = 1 << 15
_HW_BITS = IPS_OFFLOAD | IPS_HW_OFFLOAD

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
_LEN_TYPE = struct.Struct("=IH")  # the part of a netlink header a count needs
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
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 33: "dccp", 47: "gre", 58: "ipv6-icmp",
               132: "sctp", 136: "udplite"}


class ConntrackError(KernelError):
    """conntrack cannot be read (no CAP_NET_ADMIN, ctnetlink missing, socket failure)."""


class NetlinkSocket(Protocol):
    """The part of a datagram socket the dump uses; tests pass a fake."""

    def send(self, data: bytes, /) -> int: ...

    def recv_into(self, buffer: bytearray, nbytes: int = 0, flags: int = 0, /) -> int: ...

    def close(self) -> None: ...


SocketFactory = Callable[[], NetlinkSocket]


@dataclass(frozen=True)
class FlowCounts:
    """Offloaded conntrack entries of one address family."""

    software: int  # IPS_OFFLOAD only
    hardware: int  # IPS_OFFLOAD and IPS_HW_OFFLOAD

    @property
    def total(self) -> int:
        return self.software + self.hardware


@dataclass(frozen=True)
class ConntrackTotals:
    count: int
    limit: int | None  # None: nf_conntrack_max not readable in this namespace


@dataclass(frozen=True)
class FlowTuple:
    src: str
    dst: str
    proto: int
    sport: int  # 0 when the protocol has no ports
    dport: int


@dataclass(frozen=True)
class OffloadedFlow:
    id: int
    family: int
    status: int
    orig: FlowTuple
    reply: FlowTuple
    # None when the entry has no accounting extension (nf_conntrack_acct was
    # off when the connection started).
    orig_packets: int | None = None
    orig_bytes: int | None = None
    reply_packets: int | None = None
    reply_bytes: int | None = None
    helper: str | None = None  # a conntrack helper (ftp, sip, ...) keeps a flow on the slow path
    # Seconds left; None for offloaded entries (the kernel omits it for them).
    timeout: int | None = None
    use: int | None = None  # references held on the entry (a flowtable entry holds one)

    @property
    def hardware(self) -> bool:
        return bool(self.status & IPS_HW_OFFLOAD)

    @property
    def proto_name(self) -> str:
        return PROTO_NAMES.get(self.orig.proto, str(self.orig.proto))

    @property
    def bytes(self) -> int:
        return (self.orig_bytes or 0) + (self.reply_bytes or 0)

    @property
    def packets(self) -> int:
        return (self.orig_packets or 0) + (self.reply_packets or 0)


def ensure_accounting(path: Path = ACCT) -> bool:
    """Turns conntrack accounting on; returns True if it had to be changed."""
    try:
        if path.read_text().strip() == "1":
            return False
        path.write_text("1\n")
    except OSError as e:
        raise KernelError(
            f"cannot enable conntrack accounting ({path}: {e.strerror}); elephant_packets "
            "needs it: load nf_conntrack and run offloadd with CAP_NET_ADMIN, or set "
            "net.netfilter.nf_conntrack_acct=1") from e
    return True


# -- timeouts that make a teardown destroy the entry ---------------------------

NETFILTER_SYSCTL = Path("/proc/sys/net/netfilter")
# (protocol, flowtable timeout, the conntrack timeout a torn-down flow gets
# back minus the flowtable one: nf_flow_table_core.c flow_offload_fixup_ct)
TEARDOWN_TIMEOUTS = (
    ("udp", "nf_flowtable_udp_timeout", "nf_conntrack_udp_timeout_stream"),
    ("tcp", "nf_flowtable_tcp_timeout", "nf_conntrack_tcp_timeout_established"),
)


def teardown_timeout_warnings(root: Path = NETFILTER_SYSCTL) -> list[str]:
    """Warnings for flowtable timeouts that are not below conntrack's.

    When an offloaded flow is torn down (a route cache flush after any
    device is removed, a flowtable deleted), the kernel sets its conntrack
    timeout to conntrack's minus the flowtable's; at or below zero the entry
    expires at once and the flow's next packet creates a new one (NAT
    mapping and helpers start over). Seen in the lab with
    nf_flowtable_udp_timeout = 3600: every UDP entry was destroyed at the
    first device removal. Unreadable sysctls are skipped.
    """
    out = []
    for proto, ft_key, ct_key in TEARDOWN_TIMEOUTS:
        try:
            ft = int((root / ft_key).read_text())
            ct = int((root / ct_key).read_text())
        except (OSError, ValueError):
            continue
        if ft >= ct:
            out.append(f"net.netfilter.{ft_key} ({ft} s) is not below "
                       f"net.netfilter.{ct_key} ({ct} s): when an offloaded {proto} flow "
                       "falls back (a device removed, a route change) its conntrack entry "
                       f"expires at once and restarts; set {ft_key} below {ct}")
    return out


# -- totals from /proc --------------------------------------------------------

def conntrack_totals(count_path: Path = CT_COUNT,
                     max_paths: tuple[Path, ...] = (CT_MAX, CT_MAX_INIT)) -> ConntrackTotals:
    """Entries in this namespace's table and its limit (None if not readable here)."""
    try:
        count = int(count_path.read_text())
    except (OSError, ValueError) as e:
        raise ConntrackError(f"cannot read the conntrack entry count ({count_path}: "
                             f"{getattr(e, 'strerror', None) or e}); is nf_conntrack loaded?"
                             ) from e
    limit = None
    for path in max_paths:
        with contextlib.suppress(OSError, ValueError):
            limit = int(path.read_text())
            break
    return ConntrackTotals(count, limit)


# -- the raw dump -------------------------------------------------------------

def kernel_filters_status(release: str | None = None) -> bool:
    """True if this kernel honours CTA_STATUS/CTA_STATUS_MASK in a dump (>= 5.15)."""
    m = re.match(r"(\d+)\.(\d+)", release if release is not None else platform.release())
    return m is not None and (int(m[1]), int(m[2])) >= STATUS_FILTER_SINCE


def open_ctnetlink() -> NetlinkSocket:
    """A NETLINK_NETFILTER socket in the calling thread's network namespace."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             NETLINK_NETFILTER)
    except OSError as e:
        raise ConntrackError(f"cannot open a netfilter netlink socket ({e.strerror}); "
                             "is nfnetlink available in this kernel?") from e
    try:
        sock.settimeout(DUMP_TIMEOUT_S)
        sock.bind((0, 0))
    except OSError as e:
        sock.close()
        raise ConntrackError(f"cannot bind a netfilter netlink socket ({e.strerror})") from e
    return sock


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
def _dump(family: int, status: int, mask: int,
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


def _control(buf: bytearray, off: int, mtype: int) -> bool:
    """For a message that is no entry: True at the dump's end; raises on an error."""
    if mtype == NLMSG_DONE:
        return True
    if mtype == NLMSG_ERROR:
        code = -NLMSG_ERR_CODE.unpack_from(buf, off + NLMSG_HDR.size)[0]
        if code:
            raise ConntrackError(_error_line(code))
    return False


def _entries(family: int, status: int, mask: int,
             factory: SocketFactory
             ) -> Generator[tuple[bytearray, int, int, bool], None, None]:
    """Yields (buffer, attrs_start, msg_end, first_in_datagram) per conntrack entry.

    The buffer is reused for the next datagram: a consumer reads what it needs
    before asking for the next entry and keeps no reference to it.
    """
    with _dump(family, status, mask, factory) as sock:
        buf = bytearray(RECV_BUFFER)
        while True:
            n = _recv(sock, buf)
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
                elif _control(buf, off, mtype):
                    return
                off += (length + 3) & ~3


def _recv(sock: NetlinkSocket, buf: bytearray) -> int:
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


def _status(buf: bytearray | bytes, start: int, end: int) -> int | None:
    off, alen = _find_attr(buf, start, end, CTA_STATUS)
    return BE32.unpack_from(buf, off)[0] if off >= 0 and alen >= 4 else None


class _FilterIgnoredError(Exception):
    """The kernel sent an entry the status filter should have kept back."""


def count_by_status(family: int, status: int, mask: int, *, filtered: bool | None = None,
                    socket_factory: SocketFactory = open_ctnetlink) -> int:
    """Entries of `family` whose ``status & mask == status & mask`` (mask 0: all).

    filtered: whether the kernel applies the status filter (None: decide by
    the kernel version). Even when trusted, the first entry of each datagram is
    checked; if the kernel ignored the filter the dump is redone checking every
    entry, so the answer is right either way.
    """
    want = status & mask
    trust = filtered if filtered is not None else kernel_filters_status()
    if mask and trust:
        try:
            return sum(_tally(family, want, mask, socket_factory, verify_all=False))
        except _FilterIgnoredError:
            pass
    return sum(_tally(family, want, mask, socket_factory, verify_all=bool(mask)))


def _tally(family: int, want: int, mask: int, factory: SocketFactory, *,
           verify_all: bool) -> list[int]:
    """Entries of one status-filtered dump, counted per address family.

    The hot loop of a scrape: per entry it reads the message header and the
    family byte, nothing else, and builds no object. With ``verify_all``
    every entry's status is checked and mismatches skipped (kernels < 5.15
    ignore the filter); otherwise only each datagram's first entry is, and a
    mismatch raises _FilterIgnoredError so the caller can redo the dump.
    Returns a list indexed by family number.
    """
    tally = [0] * 256
    with _dump(family, want, mask, factory) as sock:
        buf = bytearray(RECV_BUFFER)
        head = _LEN_TYPE.unpack_from
        fam_at = PAYLOAD - NFGEN_HDR.size
        while True:
            n = _recv(sock, buf)
            off = 0
            check = True
            while off + NLMSG_HDR.size <= n:
                length, mtype = head(buf, off)
                end = off + length
                if length < NLMSG_HDR.size or end > n:
                    raise ConntrackError("malformed netlink message in the conntrack dump")
                if mtype == CT_NEW:
                    if check and mask:
                        st = _status(buf, off + PAYLOAD, end)
                        if st is None or st & mask != want:
                            if not verify_all:
                                raise _FilterIgnoredError
                            off += (length + 3) & ~3
                            continue
                        check = verify_all
                    tally[buf[off + fam_at]] += 1
                elif _control(buf, off, mtype):
                    return tally
                off += (length + 3) & ~3


def _offloaded(family: int, factory: SocketFactory,
               filtered: bool | None = None) -> dict[int, FlowCounts]:
    # Where the kernel filters by status (>= 5.15) two dumps are cheapest:
    # every offloaded entry, then the hardware ones (normally few), each
    # counted from headers alone; software = all - hardware. Reading every
    # entry's status instead cost 2.3x as much (100k entries, TCG VM). Older
    # kernels get one dump whose entries' status is read.
    fams = (int(socket.AF_INET), int(socket.AF_INET6))
    trust = filtered if filtered is not None else kernel_filters_status()
    if trust:
        try:
            every = _tally(family, IPS_OFFLOAD, IPS_OFFLOAD, factory, verify_all=False)
            hw = _tally(family, _HW_BITS, _HW_BITS, factory, verify_all=False)
        except _FilterIgnoredError:
            pass
        else:
            # Two dumps are not one snapshot: a flow turning hardware between
            # them must not make the software count negative.
            return {f: FlowCounts(software=max(0, every[f] - hw[f]), hardware=hw[f])
                    for f in fams}
    counts = {f: [0, 0] for f in fams}
    with contextlib.closing(_entries(family, IPS_OFFLOAD, IPS_OFFLOAD, factory)) as it:
        for buf, start, end, _first in it:
            st = _status(buf, start, end)
            if st is None or not st & IPS_OFFLOAD:
                continue
            per = counts.get(buf[start - NFGEN_HDR.size])
            if per is not None:
                per[1 if st & IPS_HW_OFFLOAD else 0] += 1
    return {f: FlowCounts(software=sw, hardware=hw_n) for f, (sw, hw_n) in counts.items()}


@dataclass(frozen=True)
class OffloadCounts:
    """Offloaded entries of both address families, from one dump."""

    ipv4: FlowCounts
    ipv6: FlowCounts


def count_offloaded(*, socket_factory: SocketFactory = open_ctnetlink,
                    filtered: bool | None = None) -> OffloadCounts:
    """Offloaded entries (software vs hardware) of IPv4 and IPv6.

    filtered: whether the kernel applies the status filter (None: decide by
    the kernel version); a kernel that ignores it is detected either way.
    """
    got = _offloaded(socket.AF_UNSPEC, socket_factory, filtered)
    return OffloadCounts(ipv4=got[int(socket.AF_INET)], ipv6=got[int(socket.AF_INET6)])


def count_flows(family: int, *, socket_factory: SocketFactory = open_ctnetlink,
                filtered: bool | None = None) -> FlowCounts:
    """Offloaded entries of one family (AF_INET or AF_INET6), software vs hardware."""
    if family not in (socket.AF_INET, socket.AF_INET6):
        raise ValueError(f"family must be AF_INET or AF_INET6, got {family}")
    return _offloaded(family, socket_factory, filtered)[int(family)]


@dataclass(frozen=True)
class ConntrackCounter:
    """The metrics FlowCounter over the running kernel (this process's netns)."""

    socket_factory: SocketFactory = open_ctnetlink

    def offloaded(self) -> OffloadCounts:
        return count_offloaded(socket_factory=self.socket_factory)

    def totals(self) -> ConntrackTotals:
        return conntrack_totals()


# -- listing (offloadctl flows) -----------------------------------------------

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
        timeout=_u32(buf, start, end, CTA_TIMEOUT), use=_u32(buf, start, end, CTA_USE),
        helper=helper,
        id=BE32.unpack_from(buf, id_off)[0] if id_off >= 0 and id_len >= 4 else 0,
        family=family, status=_status(buf, start, end) or 0,
        orig=tuples[0], reply=tuples[1],
        orig_packets=o_pk, orig_bytes=o_by, reply_packets=r_pk, reply_bytes=r_by)


def list_by_status(family: int, status: int, mask: int, limit: int, *,
                   socket_factory: SocketFactory = open_ctnetlink) -> list[OffloadedFlow]:
    """Up to `limit` matching entries, most bytes first.

    Memory is bounded by `limit` (a heap), not by the table size. Every entry's
    status is checked, so a kernel that ignores the filter gives the same list.
    """
    if limit <= 0:
        return []
    return heapq.nlargest(limit, entries_by_status(family, status, mask,
                                                   socket_factory=socket_factory),
                          key=lambda f: (f.bytes, f.packets))


def entries_by_status(family: int, status: int, mask: int, *,
                      socket_factory: SocketFactory = open_ctnetlink,
                      keep: Callable[[int, int | None, int | None], bool] | None = None
                      ) -> Iterator[OffloadedFlow]:
    """Every entry whose ``status & mask == status & mask``, parsed, one at a time.

    The kernel filters (>= 5.15); each entry's status is checked too, so a
    kernel that ignores the filter gives the same entries. ``keep(status,
    timeout, use)`` narrows further from three attributes, before an entry is
    parsed: a scan of a big table then builds objects only for what it keeps.
    """
    want = status & mask
    with contextlib.closing(_entries(family, want, mask, socket_factory)) as it:
        for buf, start, end, _first in it:
            st = _status(buf, start, end)
            if mask and (st is None or st & mask != want):
                continue
            if keep is not None and not keep(st or 0, _u32(buf, start, end, CTA_TIMEOUT),
                                             _u32(buf, start, end, CTA_USE)):
                continue
            yield parse_entry(buf, start, end, family)


def _u32(buf: bytearray | bytes, start: int, end: int, kind: int) -> int | None:
    off, alen = _find_attr(buf, start, end, kind)
    return BE32.unpack_from(buf, off)[0] if off >= 0 and alen >= 4 else None


def list_offloaded(family: int, limit: int, *,
                   socket_factory: SocketFactory = open_ctnetlink) -> list[OffloadedFlow]:
    """Offloaded entries (software and hardware) of one family, most bytes first."""
    return list_by_status(family, IPS_OFFLOAD, IPS_OFFLOAD, limit,
                          socket_factory=socket_factory)
