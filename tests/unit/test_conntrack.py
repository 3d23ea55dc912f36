"""The ctnetlink walk on crafted datagrams: filtering kernels, kernels that ignore
the status filter (< 5.15), errors, entries without timeout/protoinfo.

Why: the host kernel cannot offload, so the offload/hardware split and an old
kernel's unfiltered answer can only be exercised here, with a fake socket
that speaks the wire format.
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from offloadd.core.errors import KernelError
from offloadd.core.flows import (
    IPS_ASSURED,
    IPS_CONFIRMED,
    IPS_HW_OFFLOAD,
    IPS_OFFLOAD,
    IPS_SEEN_REPLY,
    FlowTuple,
)
from offloadd.core.guard import FlowCounts
from offloadd.core.repair import HeldEntry
from offloadd.kernel import conntrack as ct
from offloadd.kernel import ctnetlink as nl
from offloadd.kernel.flowsample import FlowSampler
from offloadd.kernel.leftbehind import ConntrackScanner
from tests.unit.fakes import FakeNetlinkSocket as FakeSocket

NLM_F_MULTI = 0x2
NESTED = 0x8000


def nla(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def tuple_attr(kind: int, family: int, addrs: tuple[str, str], proto: int,
               ports: tuple[int, int]) -> bytes:
    src, dst = addrs
    sport, dport = ports
    v6 = family == socket.AF_INET6
    ip = (nla(3 if v6 else 1, socket.inet_pton(family, src))
          + nla(4 if v6 else 2, socket.inet_pton(family, dst)))
    pr = (nla(1, bytes([proto])) + nla(2, struct.pack(">H", sport))
          + nla(3, struct.pack(">H", dport)))
    return nla(kind | NESTED, nla(1 | NESTED, ip) + nla(2 | NESTED, pr))


@dataclass(frozen=True)
class E:
    status: int
    family: int = socket.AF_INET
    src: str = "10.0.0.1"
    dst: str = "10.0.0.2"
    sport: int = 1000
    dport: int = 443
    proto: int = 6
    counters: tuple[int, int, int, int] | None = None  # orig pkts/bytes, reply pkts/bytes
    id: int = 7
    timeout: int | None = None  # CTA_TIMEOUT: only entries that are not offloaded have it
    use: int | None = None

    def message(self) -> bytes:
        # As an offloaded entry looks: no CTA_TIMEOUT, no CTA_PROTOINFO.
        fam = self.family
        body = (tuple_attr(1, fam, (self.src, self.dst), self.proto, (self.sport, self.dport))
                + tuple_attr(2, fam, (self.dst, self.src), self.proto, (self.dport, self.sport))
                + nla(3, struct.pack(">I", self.status)))
        if self.counters:
            op, ob, rp, rb = self.counters
            body += nla(9 | NESTED, nla(1, struct.pack(">Q", op)) + nla(2, struct.pack(">Q", ob)))
            body += nla(10 | NESTED, nla(1, struct.pack(">Q", rp)) + nla(2, struct.pack(">Q", rb)))
        if self.timeout is not None:
            body += nla(7, struct.pack(">I", self.timeout))
        if self.use is not None:
            body += nla(11, struct.pack(">I", self.use))
        body += nla(12, struct.pack(">I", self.id))
        return msg(nl.CT_NEW, struct.pack("=BBH", self.family, 0, 0) + body)


def msg(mtype: int, payload: bytes, flags: int = NLM_F_MULTI) -> bytes:
    raw = struct.pack("=IHHII", 16 + len(payload), mtype, flags, 1, 0) + payload
    return raw + b"\0" * (-len(raw) % 4)


def done() -> bytes:
    return msg(nl.NLMSG_DONE, struct.pack("=i", 0))


def error(code: int) -> bytes:
    return msg(nl.NLMSG_ERROR, struct.pack("=i", -code) + b"\0" * 16, flags=0)


@dataclass
class FakeKernel:
    """Answers a dump like ctnetlink: filtering by family and (if it can) by status."""

    entries: list[E]
    filters_status: bool = True
    per_datagram: int = 3
    fail: int = 0  # errno to answer with
    sent: list[bytes] = field(default_factory=list)
    sockets: int = 0
    closed: int = 0

    def factory(self) -> FakeSocket:
        self.sockets += 1
        return FakeSocket(self)

    def answer(self, request: bytes) -> list[bytes]:
        if self.fail:
            return [error(self.fail)]
        family = request[16]
        attrs = {}
        off = 20
        while off < len(request):
            alen, kind = struct.unpack_from("=HH", request, off)
            attrs[kind] = struct.unpack_from(">I", request, off + 4)[0]
            off += alen
        chosen = [e for e in self.entries if not family or e.family == family]
        if self.filters_status and nl.CTA_STATUS in attrs:
            mask = attrs.get(nl.CTA_STATUS_MASK, attrs[nl.CTA_STATUS])
            chosen = [e for e in chosen if e.status & mask == attrs[nl.CTA_STATUS]]
        msgs = [e.message() for e in chosen]
        grams = [b"".join(msgs[i:i + self.per_datagram])
                 for i in range(0, len(msgs), self.per_datagram)]
        return [*grams, done()]


SW, HW = IPS_OFFLOAD, IPS_OFFLOAD | IPS_HW_OFFLOAD
PLAIN = IPS_CONFIRMED | IPS_SEEN_REPLY | IPS_ASSURED
V6 = socket.AF_INET6


def mixed() -> list[E]:
    return [E(PLAIN), E(SW | PLAIN), E(HW | PLAIN), E(SW), E(PLAIN), E(PLAIN),
            E(SW, family=V6, src="fd00::1", dst="fd00::2"),
            E(HW, family=V6, src="fd00::1", dst="fd00::3"),
            E(PLAIN, family=V6, src="fd00::1", dst="fd00::4")]


@pytest.mark.parametrize("filters", [True, False])
@pytest.mark.parametrize("trust", [True, False, None])
def test_count_offloaded_right_whatever_the_kernel_does(filters: bool, trust: bool | None
                                                       ) -> None:
    k = FakeKernel(mixed(), filters_status=filters, per_datagram=2)
    got = ct.count_offloaded(socket_factory=k.factory, filtered=trust)
    assert got == ct.OffloadCounts(ipv4=ct.FlowCounts(2, 1), ipv6=ct.FlowCounts(1, 1))
    assert all(req[16] == socket.AF_UNSPEC for req in k.sent)
    assert k.closed == k.sockets
    assert ct.count_flows(socket.AF_INET6, socket_factory=k.factory,
                          filtered=trust) == ct.FlowCounts(1, 1)
    assert ct.count_flows(socket.AF_INET, socket_factory=k.factory, filtered=trust).total == 3


def test_filtering_kernel_two_header_only_dumps() -> None:
    # All offloaded, then hardware: software is the difference; no entry's
    # status is read beyond each datagram's first.
    k = FakeKernel(mixed(), filters_status=True)
    got = ct.count_offloaded(socket_factory=k.factory, filtered=True)
    assert got == ct.OffloadCounts(ipv4=ct.FlowCounts(2, 1), ipv6=ct.FlowCounts(1, 1))
    masks = [struct.unpack_from(">I", req, 32)[0] for req in k.sent]
    assert masks == [SW, HW]


def test_ignoring_kernel_gets_one_verifying_dump_when_not_trusted() -> None:
    k = FakeKernel(mixed(), filters_status=False)
    ct.count_offloaded(socket_factory=k.factory, filtered=False)
    assert len(k.sent) == 1


def test_flow_turning_hardware_between_dumps_never_counts_negative() -> None:
    k = FakeKernel([E(SW)], filters_status=True)
    real = k.answer

    def answer(request: bytes) -> list[bytes]:
        if struct.unpack_from(">I", request, 32)[0] == HW:
            k.entries = [E(HW), E(HW)]  # both became hardware (one new) meanwhile
        return real(request)

    k.answer = answer  # type: ignore[method-assign]
    got = ct.count_offloaded(socket_factory=k.factory, filtered=True)
    assert got.ipv4 == ct.FlowCounts(software=0, hardware=2)


def test_dump_request_carries_status_filter() -> None:
    req = nl.dump_request(socket.AF_INET, IPS_OFFLOAD, IPS_OFFLOAD | IPS_HW_OFFLOAD)
    length, mtype, flags, _seq, _pid = struct.unpack_from("=IHHII", req)
    assert (length, mtype, flags) == (len(req), (1 << 8) | 1, 0x301)
    assert req[16] == socket.AF_INET
    assert req[20:] == (struct.pack("=HH", 8, 3) + struct.pack(">I", 1 << 14)
                        + struct.pack("=HH", 8, 26) + struct.pack(">I", 3 << 14))
    assert len(nl.dump_request(socket.AF_INET)) == 20  # mask 0: no filter, every entry


@pytest.mark.parametrize("filters", [True, False])
@pytest.mark.parametrize("trust", [True, False, None])
def test_count_by_status_right_whatever_the_kernel_does(filters: bool, trust: bool | None
                                                        ) -> None:
    entries = [E(PLAIN)] * 5 + [E(IPS_CONFIRMED)] * 4
    k = FakeKernel(entries, filters_status=filters, per_datagram=2)
    n = ct.count_by_status(socket.AF_INET, IPS_SEEN_REPLY, IPS_SEEN_REPLY,
                           filtered=trust, socket_factory=k.factory)
    assert n == 5
    assert k.closed == k.sockets


def test_ignored_filter_detected_in_a_later_datagram() -> None:
    # Matching entries first, so only a later datagram's first entry gives it away.
    entries = [E(SW)] * 4 + [E(PLAIN)] * 4
    k = FakeKernel(entries, filters_status=False, per_datagram=4)
    assert ct.count_by_status(socket.AF_INET, SW, SW, filtered=True,
                              socket_factory=k.factory) == 4
    assert k.sockets == 2 == k.closed  # redone, verifying every entry


def test_count_all_walks_headers_only() -> None:
    k = FakeKernel(mixed(), per_datagram=4)
    assert ct.count_by_status(socket.AF_INET, 0, 0, socket_factory=k.factory) == 6
    assert ct.count_by_status(socket.AF_UNSPEC, 0, 0, socket_factory=k.factory) == 9


@pytest.mark.parametrize(("release", "want"), [("5.10.0-21-amd64", False), ("5.15.0", True),
                                               ("6.1.0-18-amd64", True), ("4.19.1", False),
                                               ("weird", False)])
def test_kernel_filters_status(release: str, want: bool) -> None:
    assert nl.kernel_filters_status(release) is want


@pytest.mark.parametrize(("code", "words"), [(errno.EPERM, "CAP_NET_ADMIN"),
                                             (errno.EOPNOTSUPP, "nf_conntrack_netlink"),
                                             (errno.EINVAL, "EINVAL")])
def test_kernel_errors_are_one_line_kernel_errors(code: int, words: str) -> None:
    k = FakeKernel([], fail=code)
    with pytest.raises(nl.ConntrackError) as info:
        ct.count_offloaded(socket_factory=k.factory)
    assert isinstance(info.value, KernelError) and isinstance(info.value, OSError)
    assert words in str(info.value) and "\n" not in str(info.value)
    assert k.closed == 1


def test_truncated_datagram_is_an_error() -> None:
    class Huge(FakeSocket):
        def recv_into(self, buffer: bytearray, nbytes: int = 0, flags: int = 0, /) -> int:
            return len(buffer) + 1 if flags & socket.MSG_TRUNC else len(buffer)

    k = FakeKernel([])
    with pytest.raises(nl.ConntrackError, match="exceeds"):
        ct.count_by_status(socket.AF_INET, 0, 0, socket_factory=lambda: Huge(k))


def test_list_offloaded_parses_and_orders_by_bytes() -> None:
    entries = [E(SW, sport=1, counters=(1, 100, 1, 50)),
               E(HW, sport=2, counters=(10, 9000, 8, 4000), proto=17),
               E(PLAIN, sport=3, counters=(99, 10**9, 99, 10**9)),  # not offloaded
               E(SW, sport=4),  # no accounting extension
               E(SW, sport=5, counters=(5, 2000, 5, 2000))]
    for filters in (True, False):
        k = FakeKernel(entries, filters_status=filters)
        flows = ct.list_offloaded(socket.AF_INET, 3, socket_factory=k.factory)
        assert [f.orig.sport for f in flows] == [2, 5, 1]
        top = flows[0]
        assert top.hardware and top.proto_name == "udp" and top.bytes == 13000
        assert top.orig == FlowTuple("10.0.0.1", "10.0.0.2", 17, 2, 443)
        assert top.reply == FlowTuple("10.0.0.2", "10.0.0.1", 17, 443, 2)
        assert (top.orig_packets, top.orig_bytes, top.reply_packets, top.reply_bytes) == (
            10, 9000, 8, 4000)
        assert top.id == 7
    k = FakeKernel(entries)
    last = ct.list_offloaded(socket.AF_INET, 10, socket_factory=k.factory)[-1]
    assert last.orig.sport == 4 and last.orig_bytes is None and last.bytes == 0
    assert ct.list_offloaded(socket.AF_INET, 0, socket_factory=k.factory) == []


def test_list_ipv6() -> None:
    k = FakeKernel(mixed())
    flows = ct.list_offloaded(V6, 5, socket_factory=k.factory)
    assert {(f.orig.src, f.orig.dst, f.hardware) for f in flows} == {
        ("fd00::1", "fd00::2", False), ("fd00::1", "fd00::3", True)}


def test_totals(tmp_path: Path) -> None:
    count, mx = tmp_path / "count", tmp_path / "max"
    count.write_text("42\n")
    assert ct.conntrack_totals(count, (mx,)) == ct.ConntrackTotals(42, None)
    mx.write_text("262144\n")
    assert ct.conntrack_totals(count, (tmp_path / "nope", mx)) == ct.ConntrackTotals(42, 262144)
    with pytest.raises(nl.ConntrackError, match="nf_conntrack"):
        ct.conntrack_totals(tmp_path / "nope", (mx,))


def test_limit_alone(tmp_path: Path) -> None:
    # What the gate's size follows (offloadd.core.gate.gate_size), read on every
    # reconcile pass: without the entry count, which it does not need.
    mx, bad = tmp_path / "max", tmp_path / "bad"
    bad.write_text("many\n")
    assert ct.conntrack_limit((tmp_path / "nope", bad)) is None
    mx.write_text("4194304\n")
    assert ct.conntrack_limit((tmp_path / "nope", bad, mx)) == 4194304


def _totals(k: FakeKernel) -> ct.ConntrackTotals:
    return ct.ConntrackTotals(len(k.entries), None)


def _walks(k: FakeKernel) -> list[tuple[int, int, int]]:
    """(family, status, mask) of each dump request sent."""
    return [(req[16], struct.unpack_from(">I", req, 24)[0], struct.unpack_from(">I", req, 32)[0])
            for req in k.sent]


def test_counter_is_the_metrics_source() -> None:
    k = FakeKernel(mixed())
    counter = ct.ConntrackCounter(socket_factory=k.factory, totals=lambda: _totals(k))
    assert counter.offloaded() == ct.OffloadCounts(ipv4=ct.FlowCounts(2, 1),
                                                   ipv6=ct.FlowCounts(1, 1))
    assert counter.totals().count == 9


@pytest.mark.parametrize("walk", [socket.AF_INET, socket.AF_INET6])
def test_derived_count_equals_direct_one(walk: int) -> None:
    # The other family's count is the total minus what the dumps sent; the
    # dumps send only the entries not offloaded, `walk`'s offloaded, hardware.
    k = FakeKernel(mixed())
    got = ct.count_offloaded(socket_factory=k.factory, filtered=True, walk=walk,
                             total=lambda: len(k.entries))
    assert got == ct.count_offloaded(socket_factory=k.factory, filtered=True)
    assert _walks(k)[:3] == [(socket.AF_UNSPEC, 0, SW), (walk, SW, SW), (socket.AF_UNSPEC, HW, HW)]


@pytest.mark.parametrize("trust", [True, None])
def test_derived_count_on_a_kernel_ignoring_the_filter_reads_every_status(
        trust: bool | None) -> None:
    k = FakeKernel(mixed(), filters_status=False)
    got = ct.count_offloaded(socket_factory=k.factory, filtered=trust, walk=socket.AF_INET6,
                             total=lambda: 1000)  # a total the answer must not use
    assert got == ct.OffloadCounts(ipv4=ct.FlowCounts(2, 1), ipv6=ct.FlowCounts(1, 1))


def test_derived_count_never_negative_when_entries_go_meanwhile() -> None:
    # The total read before the dumps counted entries gone when they ran.
    k = FakeKernel(mixed())
    totals = iter([0, 0])
    got = ct.count_offloaded(socket_factory=k.factory, filtered=True, walk=socket.AF_INET6,
                             total=lambda: next(totals))
    assert got.ipv4 == ct.FlowCounts(0, 1)
    assert got.ipv6 == ct.FlowCounts(1, 1)


def test_derived_count_uses_the_total_around_the_dumps() -> None:
    # 2 IPv4 entries offloaded while the dumps ran (total 9 before, 11 after):
    # half of them counted, as a direct dump might have seen them or not.
    k = FakeKernel(mixed())
    totals = iter([9, 11])
    got = ct.count_offloaded(socket_factory=k.factory, filtered=True, walk=socket.AF_INET6,
                             total=lambda: next(totals))
    assert got.ipv4.total == 4


def test_bad_walk_family_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="AF_UNSPEC, AF_INET or AF_INET6"):
        ct.count_offloaded(walk=socket.AF_PACKET)


def test_counter_dumps_the_smaller_side() -> None:
    # Mostly offloaded: after the first count, the entries not offloaded and
    # IPv6's offloaded are dumped (few) and IPv4's derived. Mostly not
    # offloaded: the offloaded ones are dumped.
    busy = [*(E(SW, sport=p) for p in range(1, 50)), E(PLAIN),
            E(SW, family=V6, src="fd00::1", dst="fd00::2")]
    k = FakeKernel(busy, per_datagram=8)
    counter = ct.ConntrackCounter(socket_factory=k.factory, totals=lambda: _totals(k))
    for _ in range(2):
        k.sent.clear()
        assert counter.offloaded() == ct.OffloadCounts(ipv4=ct.FlowCounts(49, 0),
                                                       ipv6=ct.FlowCounts(1, 0))
        assert _walks(k)[:2] == [(socket.AF_UNSPEC, 0, SW), (socket.AF_INET6, SW, SW)]
    k.entries = [E(PLAIN, sport=p) for p in range(1, 50)] + [E(SW)]
    counter.offloaded()
    k.sent.clear()
    assert counter.offloaded().ipv4 == ct.FlowCounts(1, 0)
    assert _walks(k) == [(socket.AF_UNSPEC, SW, SW), (socket.AF_UNSPEC, HW, HW)]


def _sysctls(root: Path, **values: int) -> Path:
    for key, value in values.items():
        (root / key).write_text(f"{value}\n")
    return root


def test_teardown_timeouts_default_kernel_values_give_no_warning(tmp_path: Path) -> None:
    root = _sysctls(tmp_path, nf_flowtable_udp_timeout=30, nf_conntrack_udp_timeout_stream=120,
                    nf_flowtable_tcp_timeout=30,
                    nf_conntrack_tcp_timeout_established=432000)
    assert ct.teardown_timeout_warnings(root) == []


def test_flowtable_timeout_not_below_conntrack_is_one_line_warning(tmp_path: Path) -> None:
    root = _sysctls(tmp_path, nf_flowtable_udp_timeout=3600,
                    nf_conntrack_udp_timeout_stream=120)
    (w,) = ct.teardown_timeout_warnings(root)  # tcp keys unreadable: skipped
    assert "nf_flowtable_udp_timeout (3600 s)" in w and "nf_conntrack_udp_timeout_stream" in w
    assert "below 120" in w and "\n" not in w


# -- entries left behind by the kernel (offloadd.kernel.leftbehind) -----------------------

class FakeRoutes:
    """Where the router's routes lead: 10.0.0.x via lan0, 10.9.x via wan0."""

    closed = 0
    opened = 0

    def __init__(self) -> None:
        FakeRoutes.opened += 1
        self.cache_cleared = 0

    def forget(self) -> None:
        self.cache_cleared += 1

    def device_towards(self, addr: str) -> str | None:
        if addr.startswith("10.0.0."):
            return "lan0"
        if addr.startswith("10.9.") or addr.startswith("fd09"):
            return "wan0"
        return "eth7"

    def close(self) -> None:
        FakeRoutes.closed += 1


@pytest.mark.parametrize("filters", [True, False])
def test_scanner_reports_held_entries_and_their_flowtable(filters: bool) -> None:
    k = FakeKernel([
        # As 7.3.4 leaves them: no OFFLOAD, a day's timeout, use 2.
        E(PLAIN, dst="10.9.0.1", timeout=86392, use=2, id=1),
        E(PLAIN, family=V6, src="fd00::1", dst="fd09::1", timeout=115, use=2, id=2),
        E(PLAIN | SW, dst="10.9.0.1", id=3),                    # offloaded: fine
        E(PLAIN, dst="10.9.0.1", timeout=86000, use=1, id=5),  # no flowtable holds it
        E(PLAIN, src="10.5.0.1", dst="10.6.0.1", timeout=86392, use=2, id=6),  # not ours
    ], filters_status=filters)
    scanner = ConntrackScanner(k.factory, FakeRoutes)
    opened = FakeRoutes.opened
    scan = scanner.scan({"lan0": "ft", "wan0": "ft"})
    assert scan.held == {1: HeldEntry(86392, "ft"), 2: HeldEntry(115, "ft"),
                         6: HeldEntry(86392, None)}
    # Both families from one dump (the kernel walks its whole table per dump).
    assert k.sockets == 1 and [r[16] for r in k.sent] == [socket.AF_UNSPEC]
    assert k.closed == k.sockets  # every dump socket closed
    # The route lookup is opened once and kept (opening it costs seconds under
    # TCG), its answers forgotten at each scan (routes change).
    again = scanner.scan({"lan0": "ft", "wan0": "ft"})
    assert again.held == scan.held
    assert FakeRoutes.opened == opened + 1
    scanner.close()


def test_scanner_opens_no_route_socket_when_nothing_is_held() -> None:
    def no_routes() -> FakeRoutes:
        raise AssertionError("route lookups without a finding")

    k = FakeKernel([E(PLAIN | SW, id=3), E(PLAIN, timeout=100, use=1)])
    assert ConntrackScanner(k.factory, no_routes).scan({"lan0": "ft"}).held == {}


def test_flow_sampler_counts_offloaded_flows_and_the_devices_they_cross() -> None:
    """The stack guard's sample: offloaded entries with counters only (those
    without began before accounting), per family, with the devices towards
    both ends; at most ``at_most`` of them."""
    k = FakeKernel([
        E(PLAIN | SW, dst="10.9.0.1", counters=(50, 5000, 0, 0), id=1),
        E(PLAIN | SW, family=V6, src="fd00::1", dst="fd09::1", counters=(9, 900, 8, 800), id=2),
        E(PLAIN | SW, dst="10.9.0.2", id=3),  # no accounting extension
        E(PLAIN, dst="10.9.0.3", counters=(1, 1, 1, 1), timeout=30, id=4),  # not offloaded
    ])
    look = FlowSampler(k.factory, FakeRoutes).sample()
    assert look.flows == {
        1: FlowCounts(1, 50, 0, frozenset({"lan0", "wan0"}), 4),
        2: FlowCounts(2, 9, 8, frozenset({"eth7", "wan0"}), 6),
    }
    assert k.sockets == 1 and [r[16] for r in k.sent] == [socket.AF_UNSPEC]  # one dump
    assert k.closed == k.sockets
    assert list(FlowSampler(k.factory, FakeRoutes, at_most=1).sample().flows) == [1]


def test_min_use_drops_entries_before_keep_reads_them() -> None:
    """A scan's prefilter on CTA_USE alone: ``keep`` sees only the entries
    with a second reference (and one without CTA_USE is dropped)."""
    k = FakeKernel([E(PLAIN, timeout=100, use=1, id=1), E(PLAIN, timeout=100, use=2, id=2),
                    E(PLAIN, timeout=100, id=3), E(PLAIN, timeout=90, use=3, id=4)],
                   filters_status=True)
    seen: list[tuple[int, int | None, int | None]] = []

    def keep(status: int, timeout: int | None, use: int | None) -> bool:
        seen.append((status, timeout, use))
        return timeout == 100

    got = [e.id for e in ct.entries_by_status(socket.AF_INET, 0, SW, socket_factory=k.factory,
                                              keep=keep, min_use=2)]
    assert got == [2]
    assert seen == [(PLAIN, 100, 2), (PLAIN, 90, 3)]
