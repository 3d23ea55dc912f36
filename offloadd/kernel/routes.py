"""Which device does the router use towards an address? (route lookups for
offloadctl and the left-behind scan)

A flow's devices are not in conntrack; the router's routing table says where
each end lies, which is what the flowtable sees too. One RTM_GETROUTE per
address on a raw rtnetlink socket: pyroute2's import alone took seconds of
every `offloadctl flows`/`explain` under emulation, for one message.
"""

from __future__ import annotations

import ipaddress
import itertools
import socket
import struct

from offloadd.kernel.nlattr import NLA_HDR, NLMSG_HDR, attrs

RTM_NEWROUTE, RTM_GETROUTE = 24, 26
NLM_F_REQUEST = 0x1
RTA_DST, RTA_OIF = 1, 4
# struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
RTMSG = struct.Struct("=BBBBBBBBI")


def route_request(addr: str, seq: int) -> bytes:
    """RTM_GETROUTE for ``addr`` (ValueError if it is no address)."""
    ip = ipaddress.ip_address(addr)
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    dst = ip.packed
    body = (RTMSG.pack(family, len(dst) * 8, 0, 0, 0, 0, 0, 0, 0)
            + NLA_HDR.pack(NLA_HDR.size + len(dst), RTA_DST) + dst)
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), RTM_GETROUTE, NLM_F_REQUEST, seq, 0) + body


def route_answer(reply: bytes, seq: int) -> tuple[bool, int | None]:
    """(whether ``reply`` answers request ``seq``, the output interface index
    of its route: None for no route or an error answer)."""
    off = 0
    while off + NLMSG_HDR.size <= len(reply):
        length, kind, _flags, rseq, _pid = NLMSG_HDR.unpack_from(reply, off)
        if length < NLMSG_HDR.size:
            break
        if rseq == seq:
            if kind != RTM_NEWROUTE:  # NLMSG_ERROR: no route
                return True, None
            for typ, value in attrs(reply, off + NLMSG_HDR.size + RTMSG.size, off + length):
                if typ == RTA_OIF and len(value) >= 4:
                    return True, int(struct.unpack_from("=I", value)[0])
            return True, None
        off += (length + 3) & ~3
    return False, None


class RouteLookup:
    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._sock.settimeout(5.0)
        self._seq = itertools.count(1)
        self._cache: dict[str, str | None] = {}

    def forget(self) -> None:
        """Drops cached answers (routes change; a long-lived lookup asks again)."""
        self._cache.clear()

    def device_towards(self, addr: str) -> str | None:
        if addr not in self._cache:
            self._cache[addr] = self._lookup(addr)
        return self._cache[addr]

    def _lookup(self, addr: str) -> str | None:
        seq = next(self._seq)
        try:
            self._sock.send(route_request(addr, seq))
            answered, oif = False, None
            while not answered:  # an answer to an earlier request may come late
                answered, oif = route_answer(self._sock.recv(65536), seq)
            return socket.if_indextoname(oif) if oif else None
        except (OSError, ValueError):  # unreachable, bad address, device gone meanwhile
            return None

    def close(self) -> None:
        self._sock.close()

