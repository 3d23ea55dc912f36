"""rtnl: the raw link-message parser against pyroute2's encoder, and the raw
socket's dump/recv logic against a fake kernel on a socketpair.

Why pyroute2 as the reference: it is what the watcher read until now, so a
message it encodes must give the same Link and the same table change when
parsed here as when decoded by pyroute2 itself.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from offloadd.core.config import device_name_problem
from offloadd.core.errors import KernelError, NetlinkOverrunError
from offloadd.core.model import Link
from offloadd.kernel import rtnl
from offloadd.kernel.linkmsg import (
    ARPHRD_LOOPBACK,
    ARPHRD_PPP,
    RTM_DELLINK,
    RTM_NEWLINK,
    LinkTable,
    decode_name,
    link_from_msg,
)
from offloadd.kernel.rtnl import RawLinkSocket, parse_messages

ARPHRD_ETHER = 1
AF_BRIDGE = 7
IFF_UP = 0x1
NLM_F_MULTI = 0x2
PORTID = 4242

# -- building messages -----------------------------------------------------------


def encode(index: int, name: str | None, *, mtype: int = RTM_NEWLINK, flags: int = 0,
           ifi_type: int = ARPHRD_ETHER, family: int = 0, seq: int = 0, pid: int = 0,
           linkinfo: list[tuple[str, str]] | None = None,
           extra: list[tuple[str, Any]] | None = None) -> bytes:
    """A link message as pyroute2 encodes it."""
    m = ifinfmsg()
    m["header"]["type"] = mtype
    m["header"]["flags"] = NLM_F_MULTI if seq else 0
    m["header"]["sequence_number"] = seq
    m["header"]["pid"] = pid
    m["family"] = family
    m["index"] = index
    m["flags"] = flags
    m["ifi_type"] = ifi_type
    attrs: list[Any] = [] if name is None else [("IFLA_IFNAME", name)]
    if linkinfo is not None:
        attrs.append(("IFLA_LINKINFO", {"attrs": linkinfo}))
    attrs += extra or []
    m["attrs"] = attrs
    m.encode()
    return bytes(m.data)


def decoded(data: bytes) -> Any:
    """pyroute2's reading of the same bytes."""
    m = ifinfmsg(data)
    m.decode()
    return m


def control(mtype: int, error: int, seq: int = 0, pid: int = 0) -> bytes:
    """NLMSG_DONE or NLMSG_ERROR (the latter echoes a request header)."""
    body = struct.pack("=i", error)
    if mtype == rtnl.NLMSG_ERROR:
        body += rtnl.NLMSG_HDR.pack(32, rtnl.RTM_GETLINK, 0x301, seq, pid)
    return rtnl.NLMSG_HDR.pack(16 + len(body), mtype, NLM_F_MULTI, seq, pid) + body


def nla(atype: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), atype) + payload
    return raw + bytes(-len(raw) % 4)


def raw_link(index: int, attrs: bytes, *, mtype: int = RTM_NEWLINK) -> bytes:
    body = struct.pack("=BxHiII", 0, ARPHRD_ETHER, index, 0, 0) + attrs
    return rtnl.NLMSG_HDR.pack(16 + len(body), mtype, 0, 0, 0) + body


CASES: dict[str, bytes] = {
    "veth": encode(5, "v0", flags=IFF_UP, linkinfo=[("IFLA_INFO_KIND", "veth")]),
    "vlan": encode(6, "eth0.10", linkinfo=[("IFLA_INFO_KIND", "vlan")]),
    "no linkinfo": encode(2, "eth0", flags=IFF_UP | 0x1000),
    "bridge port": encode(3, "eth1", linkinfo=[("IFLA_INFO_SLAVE_KIND", "bridge")]),
    "kind and slave kind": encode(
        7, "v7", linkinfo=[("IFLA_INFO_KIND", "veth"), ("IFLA_INFO_SLAVE_KIND", "bridge")]),
    "ppp": encode(9, "ppp0", flags=IFF_UP, ifi_type=ARPHRD_PPP),
    "loopback": encode(1, "lo", flags=0x49, ifi_type=ARPHRD_LOOPBACK),
    "loopback flag only": encode(8, "lo2", flags=0x8),
    "AF_BRIDGE newlink": encode(5, "v0", family=AF_BRIDGE,
                                linkinfo=[("IFLA_INFO_KIND", "veth")]),
    "AF_BRIDGE dellink": encode(5, "v0", family=AF_BRIDGE, mtype=RTM_DELLINK),
    "dellink": encode(5, "v0", mtype=RTM_DELLINK, linkinfo=[("IFLA_INFO_KIND", "veth")]),
    "dellink to netns": encode(5, "v0", mtype=RTM_DELLINK, extra=[("IFLA_NEW_NETNSID", 0)]),
    "other attributes": encode(4, "br0", linkinfo=[("IFLA_INFO_KIND", "bridge")],
                               extra=[("IFLA_MTU", 9000), ("IFLA_ADDRESS", "02:00:00:00:00:01"),
                                      ("IFLA_IFALIAS", "uplink"), ("IFLA_TXQLEN", 1000)]),
    "no name": encode(4, None),
    "utf-8 name": encode(12, "wlän0", linkinfo=[("IFLA_INFO_KIND", "macvlan")]),
    "vlan over eth1": encode(13, "eth1.7", linkinfo=[("IFLA_INFO_KIND", "vlan")],
                             extra=[("IFLA_LINK", 3)]),
    "vlan over another netns": encode(14, "eth9.7", linkinfo=[("IFLA_INFO_KIND", "vlan")],
                                      extra=[("IFLA_LINK", 3), ("IFLA_LINK_NETNSID", 1)]),
    "bridge port with master": encode(15, "lan0", linkinfo=[("IFLA_INFO_KIND", "veth")],
                                      extra=[("IFLA_MASTER", 4), ("IFLA_LINK", 16)]),
}


def _nla_number(nla_map: tuple[Any, ...], name: str) -> int:
    for pos, entry in enumerate(nla_map):
        if isinstance(entry[0], int) and entry[1] == name:
            return entry[0]
        if entry[0] == name:
            return pos
    raise KeyError(name)


# -- parser ---------------------------------------------------------------------------


def test_attribute_numbers_match_pyroute2_and_if_link_h() -> None:
    assert (rtnl.IFLA_IFNAME, rtnl.IFLA_LINKINFO, rtnl.IFLA_NEW_NETNSID) == (3, 18, 45)
    assert rtnl.IFLA_INFO_KIND == 1
    assert (rtnl.IFLA_LINK, rtnl.IFLA_MASTER, rtnl.IFLA_LINK_NETNSID) == (5, 10, 37)
    for name in ("IFLA_LINK", "IFLA_MASTER", "IFLA_LINK_NETNSID"):
        assert _nla_number(ifinfmsg.nla_map, name) == getattr(rtnl, name)
    assert _nla_number(ifinfmsg.nla_map, "IFLA_IFNAME") == rtnl.IFLA_IFNAME
    assert _nla_number(ifinfmsg.nla_map, "IFLA_LINKINFO") == rtnl.IFLA_LINKINFO
    assert _nla_number(ifinfmsg.nla_map, "IFLA_NEW_NETNSID") == rtnl.IFLA_NEW_NETNSID
    assert _nla_number(ifinfmsg.ifinfo.nla_map, "IFLA_INFO_KIND") == rtnl.IFLA_INFO_KIND
    assert (rtnl.IFLA_ADDRESS, rtnl.IFLA_MTU) == (1, 4)
    for name in ("IFLA_ADDRESS", "IFLA_MTU"):
        assert _nla_number(ifinfmsg.nla_map, name) == getattr(rtnl, name)
    assert rtnl.IFINFOMSG.size == 16 and rtnl.NLMSG_HDR.size == 16


@pytest.mark.parametrize("case", sorted(CASES))
def test_parse_agrees_with_pyroute2(case: str) -> None:
    data = CASES[case]
    [msg] = parse_messages(data)
    ref = decoded(data)
    for key in ("family", "index", "flags", "ifi_type"):
        assert msg[key] == ref[key], key
    assert msg["header"]["type"] == ref["header"]["type"]
    assert msg.get("IFLA_IFNAME") == ref.get("IFLA_IFNAME")
    ref_info = ref.get("IFLA_LINKINFO")
    if ref_info is None:
        assert msg["IFLA_LINKINFO"] is None
    else:
        assert msg["IFLA_LINKINFO"].get("IFLA_INFO_KIND") == ref_info.get("IFLA_INFO_KIND")
    assert ("IFLA_NEW_NETNSID" in msg) == (ref.get("IFLA_NEW_NETNSID") is not None)
    # What a route cache flush is read from (LinkTable.route_flushes).
    assert msg.get("IFLA_MTU") == ref.get("IFLA_MTU")
    address = msg.get("IFLA_ADDRESS")
    assert (address.hex(":") if address is not None else None) == ref.get("IFLA_ADDRESS")
    assert link_from_msg(msg) == link_from_msg(ref)
    for start in ([], [Link(5, "v0", "veth"), Link(1, "lo", None)], [Link(4, "old", None)]):
        mine, theirs = LinkTable(start), LinkTable(start)
        assert mine.apply(msg) == theirs.apply(ref)
        assert mine.links() == theirs.links()


def test_parsed_links() -> None:
    links = {case: link_from_msg(parse_messages(data)[0]) for case, data in CASES.items()}
    assert links["veth"] == Link(5, "v0", "veth", True)
    assert links["vlan"] == Link(6, "eth0.10", "vlan", False)
    assert links["no linkinfo"] == Link(2, "eth0", None, True)
    assert links["bridge port"] == Link(3, "eth1", None, False)
    assert links["kind and slave kind"] == Link(7, "v7", "veth", False)
    assert links["ppp"] == Link(9, "ppp0", "ppp", True)
    assert links["utf-8 name"] == Link(12, "wlän0", "macvlan", False)
    # The stack's facts (offloadd.core.stack): a VLAN's lower device in this
    # namespace, a port's master; a veth's IFLA_LINK (its peer) is not kept.
    assert links["vlan over eth1"] == Link(13, "eth1.7", "vlan", False, lower=3)
    assert links["vlan over another netns"] == Link(14, "eth9.7", "vlan", False)
    assert links["bridge port with master"] == Link(15, "lan0", "veth", False, master=4)
    for none in ("loopback", "loopback flag only", "AF_BRIDGE newlink", "no name"):
        assert links[none] is None, none
    [msg] = parse_messages(CASES["bridge port"])
    assert msg["IFLA_LINKINFO"] == {}


def test_netnsid_is_host_order_s32() -> None:
    # The kernel puts it with nla_put_s32 (pyroute2 0.9 decodes it as be32).
    for nsid in (0, 1, 300, -1):
        data = raw_link(5, nla(3, b"v0\0") + nla(45, struct.pack("=i", nsid)),
                        mtype=RTM_DELLINK)
        [msg] = parse_messages(data)
        assert msg["IFLA_NEW_NETNSID"] == nsid
        t = LinkTable([Link(5, "v0", "veth")])
        assert t.apply(msg) and len(t) == 0


def test_nested_flag_bits_are_ignored_and_unknown_kinds_kept() -> None:
    info = nla(1, b"wireguard\0")
    data = raw_link(3, nla(3, b"wg0\0") + nla(18 | 0x8000, info))
    assert link_from_msg(parse_messages(data)[0]) == Link(3, "wg0", "wireguard", False)


def test_multi_message_datagram_done_and_error() -> None:
    dump = (encode(2, "eth0", seq=7, pid=PORTID)
            + encode(3, "v0", seq=7, pid=PORTID, linkinfo=[("IFLA_INFO_KIND", "veth")])
            + control(rtnl.NLMSG_DONE, 0, seq=7, pid=PORTID))
    msgs = parse_messages(dump)
    assert [m["header"]["type"] for m in msgs] == [RTM_NEWLINK, RTM_NEWLINK, rtnl.NLMSG_DONE]
    assert all(m["header"]["sequence_number"] == 7 and m["header"]["pid"] == PORTID
               for m in msgs)
    assert msgs[2]["error"] == 0
    t = LinkTable()
    assert t.replace(msgs)
    assert t.links() == (Link(2, "eth0", None, False), Link(3, "v0", "veth", False))

    [err] = parse_messages(control(rtnl.NLMSG_ERROR, -errno.EPERM, seq=7))
    assert err["header"]["type"] == rtnl.NLMSG_ERROR and err["error"] == -errno.EPERM
    assert not LinkTable().apply(err)
    # A DONE without the error code (old kernels) still ends a dump.
    [done] = parse_messages(rtnl.NLMSG_HDR.pack(16, rtnl.NLMSG_DONE, 2, 1, 0))
    assert done["error"] == 0


def test_dump_request_bytes() -> None:
    req = rtnl.getlink_dump_request(9)
    assert len(req) == 32
    assert rtnl.NLMSG_HDR.unpack_from(req) == (32, 18, 0x301, 9, 0)
    assert req[16:] == bytes(16)


def _names(msgs: list[dict[str, Any]]) -> list[str | None]:
    return [m.get("IFLA_IFNAME") for m in msgs]


def test_truncated_datagrams_never_yield_partial_messages() -> None:
    first = encode(5, "v0", linkinfo=[("IFLA_INFO_KIND", "veth")])
    second = encode(6, "v1", linkinfo=[("IFLA_INFO_KIND", "veth")])
    data = first + second
    for cut in range(len(data)):
        bad: list[str] = []
        msgs = parse_messages(data[:cut], bad)
        want = ["v0"] if cut >= len(first) else []
        assert _names(msgs) == want, cut
        assert bool(bad) == (cut not in (0, len(first))), cut


def test_bad_attribute_skips_only_its_message() -> None:
    good = encode(6, "v1", linkinfo=[("IFLA_INFO_KIND", "veth")])
    # An attribute claiming more bytes than its message has.
    broken = bytearray(encode(5, "v0", linkinfo=[("IFLA_INFO_KIND", "veth")]))
    struct.pack_into("=H", broken, 32, 200)
    # A nested attribute of length 2.
    nested = raw_link(7, nla(3, b"v7\0") + nla(18, struct.pack("=HH", 2, 1)))
    short_ifinfo = rtnl.NLMSG_HDR.pack(24, RTM_NEWLINK, 0, 0, 0) + bytes(8)
    short_nsid = raw_link(8, nla(3, b"v8\0") + nla(45, b"\1\0"), mtype=RTM_DELLINK)
    short_error = rtnl.NLMSG_HDR.pack(16, rtnl.NLMSG_ERROR, 0, 0, 0)
    bad: list[str] = []
    msgs = parse_messages(bytes(broken) + nested + short_ifinfo + short_nsid + short_error
                          + good, bad)
    assert _names(msgs) == ["v1"] and len(bad) == 5
    # Without the list the same happens, silently.
    assert _names(parse_messages(bytes(broken) + good)) == ["v1"]


def test_impossible_lengths_stop_the_datagram() -> None:
    good = encode(6, "v1")
    for length in (0, 15, 10_000):
        bad: list[str] = []
        hdr = rtnl.NLMSG_HDR.pack(length, RTM_NEWLINK, 0, 0, 0)
        assert parse_messages(good + hdr + good, bad) == parse_messages(good)
        assert len(bad) == 1
    bad = []
    assert _names(parse_messages(good + b"\1\2\3\4\5", bad)) == ["v1"] and bad


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(0, 2000))
def test_random_bytes_never_raise(junk: bytes, where: int) -> None:
    base = CASES["veth"] + CASES["dellink to netns"]
    where %= len(base) + 1
    for data in (junk, base[:where] + junk, base[:where] + junk + base[where:]):
        for msg in parse_messages(data, []):
            link_from_msg(msg)
            LinkTable().apply(msg)


# -- the socket, against a fake kernel -------------------------------------------------


class FakeKernelSocket:
    """The process side of a socketpair, answering dump requests like rtnetlink.

    `on_request(seq)` returns the datagrams to send back; `errors` are raised
    by the next recv_into calls, ahead of any datagram (as sk_err is).
    """

    def __init__(self, on_request: Callable[[int], list[bytes]] | None = None) -> None:
        self.mine, self.kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.mine.setblocking(False)
        self.on_request = on_request or (lambda seq: [control(rtnl.NLMSG_DONE, 0, seq,
                                                              PORTID)])
        self.errors: list[OSError] = []
        self.options: list[tuple[int, int, int]] = []
        self.refuse_force = False
        self.closed = 0
        self.requests: list[bytes] = []
        self.lie_about_length = False

    def emit(self, *datagrams: bytes) -> None:
        for d in datagrams:
            self.kernel.send(d)

    def fileno(self) -> int:
        return self.mine.fileno()

    def send(self, data: bytes, /) -> int:
        self.requests.append(data)
        seq = rtnl.NLMSG_HDR.unpack_from(data)[3]
        self.emit(*self.on_request(seq))
        return len(data)

    def recv_into(self, buffer: bytearray, nbytes: int = 0, flags: int = 0, /) -> int:
        if self.errors:
            raise self.errors.pop(0)
        n = self.mine.recv_into(buffer, nbytes, flags)
        return len(buffer) + 1 if self.lie_about_length else n

    def setsockopt(self, level: int, optname: int, value: int, /) -> None:
        if optname == rtnl.SO_RCVBUFFORCE and self.refuse_force:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        self.options.append((level, optname, value))

    def getsockname(self) -> Any:
        return (PORTID, 0)

    def close(self) -> None:
        self.closed += 1
        self.mine.close()
        self.kernel.close()


def _run(main: Callable[[], Any]) -> None:
    asyncio.run(main())


def test_socket_setup_and_idempotent_close() -> None:
    fake = FakeKernelSocket()
    fake.refuse_force = True

    async def main() -> None:
        sock = RawLinkSocket(rcvbuf=4096, opener=lambda: fake)
        await sock.open()
        await sock.bind()
        assert await sock.dump() == []
        sock.close()
        sock.close()
        with pytest.raises(KernelError) as e:
            await sock.recv()
        assert e.value.errno == errno.EBADF

    _run(main)
    assert fake.closed == 1
    assert fake.options == [(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),
                            (rtnl.SOL_NETLINK, rtnl.NETLINK_ADD_MEMBERSHIP, rtnl.RTNLGRP_LINK)]
    assert fake.requests == [rtnl.getlink_dump_request(1)]

    default = FakeKernelSocket()
    _run(lambda: RawLinkSocket(opener=lambda: default).open())
    assert default.options == [(socket.SOL_SOCKET, rtnl.SO_RCVBUFFORCE, rtnl.DEFAULT_RCVBUF)]


def test_group_messages_during_the_dump_come_after_it_in_order() -> None:
    late = encode(9, "late", pid=77, seq=123, linkinfo=[("IFLA_INFO_KIND", "veth")])
    gone = encode(2, "eth0", mtype=RTM_DELLINK)

    def answer(seq: int) -> list[bytes]:
        return [encode(2, "eth0", seq=seq, pid=PORTID), late,
                encode(3, "v0", seq=seq, pid=PORTID) + control(rtnl.NLMSG_DONE, 0, seq, PORTID),
                gone]

    fake = FakeKernelSocket(answer)

    async def main() -> None:
        sock = RawLinkSocket(opener=lambda: fake)
        await sock.open()
        await sock.bind()
        table = LinkTable()
        table.replace(await sock.dump())
        assert [x.name for x in table.links()] == ["eth0", "v0"]
        first = await sock.recv()
        assert _names(first) == ["late"]
        table.apply(first[0])
        # `gone` was sent after the dump's end: still on the socket.
        second = await sock.recv()
        assert second[0]["header"]["type"] == RTM_DELLINK
        table.apply(second[0])
        assert [x.name for x in table.links()] == ["late", "v0"]
        sock.close()

    _run(main)


async def _waiting_recv(fake: FakeKernelSocket, *, bind: bool = True
                        ) -> tuple[RawLinkSocket, asyncio.Future[list[rtnl.RtMsg]]]:
    """An open socket with a recv() already waiting on it."""
    sock = RawLinkSocket(opener=lambda: fake)
    await sock.open()
    if bind:
        await sock.bind()
    task = asyncio.ensure_future(sock.recv())
    await asyncio.sleep(0.01)
    return sock, task


def test_recv_waits_skips_control_and_malformed_messages() -> None:
    fake = FakeKernelSocket()

    async def main() -> None:
        sock, task = await _waiting_recv(fake)
        assert not task.done()
        fake.emit(control(rtnl.NLMSG_DONE, 0), b"\0" * 20,
                  encode(4, "a") + encode(5, "b", mtype=RTM_DELLINK))
        batch = await asyncio.wait_for(task, 5)
        assert _names(batch) == ["a", "b"]
        assert sock.malformed_total == 1
        sock.close()

    _run(main)


def test_enobufs_and_truncation_are_overruns() -> None:
    async def main() -> None:
        fake = FakeKernelSocket()
        sock = RawLinkSocket(opener=lambda: fake)
        await sock.open()
        await sock.bind()
        fake.errors.append(OSError(errno.ENOBUFS, "No buffer space available"))
        with pytest.raises(NetlinkOverrunError) as e:
            await sock.recv()
        assert e.value.errno == errno.ENOBUFS
        fake.errors.append(OSError(errno.ENOBUFS, "No buffer space available"))
        with pytest.raises(NetlinkOverrunError):
            await sock.dump()
        fake.emit(encode(4, "a"))
        fake.lie_about_length = True
        with pytest.raises(NetlinkOverrunError):
            await sock.recv()
        fake.errors.append(OSError(errno.EIO, "I/O error"))
        with pytest.raises(KernelError) as k:
            await sock.recv()
        assert k.value.errno == errno.EIO and not isinstance(k.value, NetlinkOverrunError)
        sock.close()

    _run(main)


@pytest.mark.parametrize("mtype", [rtnl.NLMSG_ERROR, rtnl.NLMSG_DONE])
@pytest.mark.parametrize(("code", "overrun"), [(errno.ENOBUFS, True), (errno.EPERM, False)])
def test_dump_errors(mtype: int, code: int, overrun: bool) -> None:
    fake = FakeKernelSocket(lambda seq: [control(mtype, -code, seq, PORTID)])

    async def main() -> None:
        sock = RawLinkSocket(opener=lambda: fake)
        await sock.open()
        with pytest.raises(KernelError) as e:
            await sock.dump()
        assert e.value.errno == code
        assert isinstance(e.value, NetlinkOverrunError) == overrun
        sock.close()

    _run(main)


def test_an_ack_or_a_foreign_error_does_not_end_the_dump() -> None:
    def answer(seq: int) -> list[bytes]:
        return [control(rtnl.NLMSG_ERROR, 0, seq, PORTID),
                control(rtnl.NLMSG_ERROR, -errno.EPERM, seq + 1, PORTID),
                encode(3, "v0", seq=seq, pid=PORTID),
                control(rtnl.NLMSG_DONE, 0, seq, PORTID)]

    fake = FakeKernelSocket(answer)

    async def main() -> None:
        sock = RawLinkSocket(opener=lambda: fake)
        await sock.open()
        assert _names(await sock.dump()) == ["v0"]
        sock.close()

    _run(main)


def test_close_wakes_a_pending_recv() -> None:
    fake = FakeKernelSocket()

    async def main() -> None:
        sock, task = await _waiting_recv(fake)
        fd = fake.fileno()
        sock.close()
        with pytest.raises(KernelError) as e:
            await asyncio.wait_for(task, 5)
        assert e.value.errno == errno.EBADF
        loop = asyncio.get_running_loop()
        assert fd not in loop._selector.get_map()  # type: ignore[attr-defined]

    _run(main)


def test_cancelled_recv_unregisters_its_reader() -> None:
    fake = FakeKernelSocket()

    async def main() -> None:
        sock, task = await _waiting_recv(fake, bind=False)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        loop = asyncio.get_running_loop()
        assert fake.fileno() not in loop._selector.get_map()  # type: ignore[attr-defined]
        fake.emit(encode(4, "a"))
        assert _names(await asyncio.wait_for(sock.recv(), 5)) == ["a"]
        sock.close()

    _run(main)


def test_a_name_that_is_not_utf8_keeps_its_bytes_and_is_never_writable() -> None:
    """Read as \\xNN, not replacement characters: two such names stay apart,
    and the backslash keeps each out of every nft script; pyroute2's reading
    (bytes) gives the same link."""
    names = set()
    for raw in (b"lan\xff", b"lan\xfe", b"\xc3(x"):
        data = raw_link(13, nla(rtnl.IFLA_IFNAME, raw + b"\0"))
        [msg] = parse_messages(data)
        link = link_from_msg(msg)
        assert link is not None and link == link_from_msg(decoded(data))
        assert device_name_problem(link.name) is not None
        names.add(link.name)
    assert names == {"lan\\xff", "lan\\xfe", "\\xc3(x"}
    assert decode_name("wlän0".encode()) == "wlän0"
