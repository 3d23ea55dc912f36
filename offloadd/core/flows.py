"""A conntrack entry as plain values, apart from the socket that reads it.

Why a module of its own: pure code reasons over entries the kernel edge
decodes (why a flow is not offloaded, which entries a flowtable left
behind, offloadctl's listing); with the values here that reasoning needs
nothing from offloadd.kernel and is tested with entries built by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

# include/uapi/linux/netfilter/nf_conntrack_common.h
IPS_SEEN_REPLY = 1 << 1
IPS_ASSURED = 1 << 2
IPS_CONFIRMED = 1 << 3
IPS_OFFLOAD = 1 << 14
IPS_HW_OFFLOAD = 1 << 15
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 33: "dccp", 47: "gre", 58: "ipv6-icmp",
               132: "sctp", 136: "udplite"}


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
