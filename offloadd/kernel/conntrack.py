"""conntrack edge: settings the offload rules depend on, and offloaded-flow counts.

``ct packets > N`` (the elephant threshold) reads conntrack's accounting
extension, which the kernel only attaches to new connections while
``nf_conntrack_acct`` is on in that network namespace.

Counts and listings come from a ctnetlink dump (offloadd.kernel.ctnetlink,
which says why it is raw netlink); this module decides which dumps to ask
for and what to make of their entries.
"""

from __future__ import annotations

import contextlib
import heapq
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from offloadd.core.countplan import Estimate, walk_family
from offloadd.core.errors import KernelError
from offloadd.core.flows import IPS_HW_OFFLOAD, IPS_OFFLOAD, OffloadedFlow
from offloadd.kernel.ctnetlink import (
    CT_NEW,
    CTA_TIMEOUT,
    CTA_USE,
    LEN_TYPE,
    NFGEN_HDR,
    NLMSG_HDR,
    PAYLOAD,
    RECV_BUFFER,
    ConntrackError,
    SocketFactory,
    attr_u32,
    control,
    dump,
    entries,
    entry_status,
    kernel_filters_status,
    open_ctnetlink,
    parse_entry,
    recv,
)

ACCT = Path("/proc/sys/net/netfilter/nf_conntrack_acct")
CT_COUNT = Path("/proc/sys/net/netfilter/nf_conntrack_count")
CT_MAX = Path("/proc/sys/net/netfilter/nf_conntrack_max")
# Only the initial namespace has this one; a child may lack both max files.
CT_MAX_INIT = Path("/proc/sys/net/nf_conntrack_max")
_HW_BITS = IPS_OFFLOAD | IPS_HW_OFFLOAD
_FAMS = (int(socket.AF_INET), int(socket.AF_INET6))


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




def ensure_accounting(path: Path = ACCT) -> bool:
    """Turns conntrack accounting on; returns True if it had to be changed."""
    try:
        if path.read_text().strip() == "1":
            return False
        path.write_text("1\n")
    except OSError as e:
        raise KernelError(
            f"cannot enable conntrack accounting ({path}: {e.strerror}); elephant_packets "
            "and the stack guard (stack = lower/both) need it: load nf_conntrack and run "
            "offloadd with CAP_NET_ADMIN, or set net.netfilter.nf_conntrack_acct=1") from e
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

def conntrack_limit(max_paths: tuple[Path, ...] = (CT_MAX, CT_MAX_INIT)) -> int | None:
    """nf_conntrack_max of this namespace (None if not readable here)."""
    for path in max_paths:
        with contextlib.suppress(OSError, ValueError):
            return int(path.read_text())
    return None


def conntrack_totals(count_path: Path = CT_COUNT,
                     max_paths: tuple[Path, ...] = (CT_MAX, CT_MAX_INIT)) -> ConntrackTotals:
    """Entries in this namespace's table and its limit (None if not readable here)."""
    try:
        count = int(count_path.read_text())
    except (OSError, ValueError) as e:
        raise ConntrackError(f"cannot read the conntrack entry count ({count_path}: "
                             f"{getattr(e, 'strerror', None) or e}); is nf_conntrack loaded?"
                             ) from e
    return ConntrackTotals(count, conntrack_limit(max_paths))


# -- counting ------------------------------------------------------------------

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
    with dump(family, want, mask, factory) as sock:
        buf = bytearray(RECV_BUFFER)
        head = LEN_TYPE.unpack_from
        fam_at = PAYLOAD - NFGEN_HDR.size
        while True:
            n = recv(sock, buf)
            off = 0
            check = True
            while off + NLMSG_HDR.size <= n:
                length, mtype = head(buf, off)
                end = off + length
                if length < NLMSG_HDR.size or end > n:
                    raise ConntrackError("malformed netlink message in the conntrack dump")
                if mtype == CT_NEW:
                    if check and mask:
                        st = entry_status(buf, off + PAYLOAD, end)
                        if st is None or st & mask != want:
                            if not verify_all:
                                raise _FilterIgnoredError
                            off += (length + 3) & ~3
                            continue
                        check = verify_all
                    tally[buf[off + fam_at]] += 1
                elif control(buf, off, mtype):
                    return tally
                off += (length + 3) & ~3


def _offloaded(family: int, factory: SocketFactory,
               filtered: bool | None = None) -> dict[int, FlowCounts]:
    # Where the kernel filters by status (>= 5.15) two dumps are cheapest:
    # every offloaded entry, then the hardware ones (normally few), each
    # counted from headers alone; software = all - hardware. Reading every
    # entry's status instead cost 2.3x as much (100k entries, TCG VM). Older
    # kernels get one dump whose entries' status is read.
    trust = filtered if filtered is not None else kernel_filters_status()
    if trust:
        try:
            every = _tally(family, IPS_OFFLOAD, IPS_OFFLOAD, factory, verify_all=False)
            hw = _tally(family, _HW_BITS, _HW_BITS, factory, verify_all=False)
        except _FilterIgnoredError:
            pass
        else:
            return _split(every, hw)
    return _verified(family, factory)


def _split(every: list[int], hw: list[int]) -> dict[int, FlowCounts]:
    # Dumps are not one snapshot: a flow turning hardware between them must
    # not make the software count negative.
    return {f: FlowCounts(software=max(0, every[f] - hw[f]), hardware=hw[f]) for f in _FAMS}


def _verified(family: int, factory: SocketFactory) -> dict[int, FlowCounts]:
    """One dump whose every entry's status is read (kernels < 5.15 ignore the filter)."""
    counts = {f: [0, 0] for f in _FAMS}
    with contextlib.closing(entries(family, IPS_OFFLOAD, IPS_OFFLOAD, factory)) as it:
        for buf, start, end, _first in it:
            st = entry_status(buf, start, end)
            if st is None or not st & IPS_OFFLOAD:
                continue
            per = counts.get(buf[start - NFGEN_HDR.size])
            if per is not None:
                per[1 if st & IPS_HW_OFFLOAD else 0] += 1
    return {f: FlowCounts(software=sw, hardware=hw_n) for f, (sw, hw_n) in counts.items()}


def _derived(walk: int, factory: SocketFactory, total: Callable[[], int],
             filtered: bool | None) -> dict[int, FlowCounts]:
    """Both families' offloaded entries from the entries not offloaded and
    `walk`'s offloaded ones (countplan says why): the other family's count is
    the table's total minus both. Three dumps, each sending only what it
    counts; the total is read around them (its mean: entries come and go
    meanwhile, as they do during a direct count's dump)."""
    trust = filtered if filtered is not None else kernel_filters_status()
    if trust:
        try:
            before = total()
            rest = _tally(socket.AF_UNSPEC, 0, IPS_OFFLOAD, factory, verify_all=False)
            walked = _tally(walk, IPS_OFFLOAD, IPS_OFFLOAD, factory, verify_all=False)
            hw = _tally(socket.AF_UNSPEC, _HW_BITS, _HW_BITS, factory, verify_all=False)
            now = (before + total()) // 2
        except _FilterIgnoredError:
            pass
        else:
            other = int(socket.AF_INET if walk == socket.AF_INET6 else socket.AF_INET6)
            walked[other] = max(0, now - sum(rest) - walked[walk])
            return _split(walked, hw)
    # Without the kernel's filter every entry is sent anyway: count them all.
    return _verified(socket.AF_UNSPEC, factory)


@dataclass(frozen=True)
class OffloadCounts:
    """Offloaded entries of both address families, from one dump."""

    ipv4: FlowCounts
    ipv6: FlowCounts


def count_offloaded(*, socket_factory: SocketFactory = open_ctnetlink,
                    filtered: bool | None = None, walk: int = socket.AF_UNSPEC,
                    total: Callable[[], int] | None = None) -> OffloadCounts:
    """Offloaded entries (software vs hardware) of IPv4 and IPv6.

    filtered: whether the kernel applies the status filter (None: decide by
    the kernel version); a kernel that ignores it is detected either way.
    walk: AF_UNSPEC counts every offloaded entry; AF_INET or AF_INET6 counts
    that family's and the entries not offloaded, and derives the other
    family's from ``total()`` (the table's entry count; offloadd.core.countplan
    says which is cheaper when).
    """
    if walk == socket.AF_UNSPEC:
        got = _offloaded(socket.AF_UNSPEC, socket_factory, filtered)
    elif walk in _FAMS:
        got = _derived(walk, socket_factory, total or (lambda: conntrack_totals().count),
                       filtered)
    else:
        raise ValueError(f"walk must be AF_UNSPEC, AF_INET or AF_INET6, got {walk}")
    return OffloadCounts(ipv4=got[int(socket.AF_INET)], ipv6=got[int(socket.AF_INET6)])


def count_flows(family: int, *, socket_factory: SocketFactory = open_ctnetlink,
                filtered: bool | None = None) -> FlowCounts:
    """Offloaded entries of one family (AF_INET or AF_INET6), software vs hardware."""
    if family not in (socket.AF_INET, socket.AF_INET6):
        raise ValueError(f"family must be AF_INET or AF_INET6, got {family}")
    return _offloaded(family, socket_factory, filtered)[int(family)]


class ConntrackCounter:
    """The metrics FlowCounter over the running kernel (this process's netns).

    Each count picks its dumps by the last one (offloadd.core.countplan): the
    offloaded entries, or the ones not offloaded and the table's total. Called
    from one thread (the background walk) at a time.
    """

    def __init__(self, socket_factory: SocketFactory = open_ctnetlink,
                 totals: Callable[[], ConntrackTotals] = conntrack_totals) -> None:
        self.socket_factory = socket_factory
        self._totals = totals
        self._last: OffloadCounts | None = None

    def offloaded(self) -> OffloadCounts:
        last = self._last
        walk = walk_family(None if last is None else Estimate(
            last.ipv4.total, last.ipv6.total, self._totals().count))
        got = count_offloaded(socket_factory=self.socket_factory, walk=walk,
                              total=lambda: self._totals().count)
        self._last = got
        return got

    def totals(self) -> ConntrackTotals:
        return self._totals()

    def age_seconds(self) -> float | None:
        # Walked at each call: the count is as old as the call.
        return 0.0


# -- listing (offloadctl flows) -----------------------------------------------

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
                      keep: Callable[[int, int | None, int | None], bool] | None = None,
                      min_use: int = 0) -> Iterator[OffloadedFlow]:
    """Every entry whose ``status & mask == status & mask``, parsed, one at a time.

    The kernel filters (>= 5.15); each entry's status is checked too, so a
    kernel that ignores the filter gives the same entries. ``keep(status,
    timeout, use)`` narrows further from three attributes, before an entry is
    parsed: a scan of a big table then builds objects only for what it keeps.
    ``min_use`` drops entries with fewer references first, from CTA_USE alone:
    it comes early in an entry and CTA_TIMEOUT last, so a scan whose ``keep``
    wants a second reference reads ~6 attributes of each entry instead of ~17
    (2.5 -> 0.7 us of Python per entry, measured on the host). ``family``
    AF_UNSPEC: both families in one dump (one walk of the kernel's table,
    not two), each entry parsed as its message's family.
    """
    want = status & mask
    with contextlib.closing(entries(family, want, mask, socket_factory)) as it:
        for buf, start, end, _first in it:
            st = entry_status(buf, start, end)
            if mask and (st is None or st & mask != want):
                continue
            if keep is not None:
                use = attr_u32(buf, start, end, CTA_USE)
                if min_use and (use is None or use < min_use):
                    continue
                if not keep(st or 0, attr_u32(buf, start, end, CTA_TIMEOUT), use):
                    continue
            yield parse_entry(buf, start, end, family or buf[start - NFGEN_HDR.size])


def list_offloaded(family: int, limit: int, *,
                   socket_factory: SocketFactory = open_ctnetlink) -> list[OffloadedFlow]:
    """Offloaded entries (software and hardware) of one family, most bytes first."""
    return list_by_status(family, IPS_OFFLOAD, IPS_OFFLOAD, limit,
                          socket_factory=socket_factory)
