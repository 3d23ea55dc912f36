"""Netlink message and attribute headers, and the attribute walk, for the raw
netfilter sockets (nf_tables change events, the forward hook list).

Why one place: both read the same TLV layout; a fix to the walk (a short or
truncated attribute) must reach both.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

NLMSG_HDR = struct.Struct("=IHHII")
NLA_HDR = struct.Struct("=HH")
NLA_TYPE_MASK = 0x3FFF


def attrs(data: bytes, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each attribute in data[start:end]; stops at a
    malformed one (shorter than its header)."""
    while start + NLA_HDR.size <= end:
        length, kind = NLA_HDR.unpack_from(data, start)
        if length < NLA_HDR.size:
            return
        yield kind & NLA_TYPE_MASK, data[start + NLA_HDR.size:start + length]
        start += (length + 3) & ~3
