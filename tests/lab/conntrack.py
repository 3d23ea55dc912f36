"""conntrack-tools as the oracle: what the kernel's conntrack table really says.

Parses ``conntrack -L -o id`` lines; offloaded entries carry ``[OFFLOAD]``
(software) or ``[HW_OFFLOAD]`` and no timeout or TCP state.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tests.lab.netns import Netns

_KV = re.compile(r"(\w+)=(\S+)")
_FLAG = re.compile(r"\[(\w+)\]")


@dataclass(frozen=True)
class CtEntry:
    proto: str
    src: str
    dst: str
    sport: int
    dport: int
    flags: frozenset[str]
    id: int
    # The reply direction (src, dst, sport, dport): with NAT, the mapping.
    reply: tuple[str, str, int, int] = ("", "", 0, 0)

    @property
    def offloaded(self) -> bool:
        return "OFFLOAD" in self.flags or "HW_OFFLOAD" in self.flags


def parse_line(line: str) -> CtEntry | None:
    parts = line.split()
    if len(parts) < 3 or parts[0] not in ("tcp", "udp", "icmp", "ipv6-icmp", "sctp"):
        return None
    first: dict[str, str] = {}
    second: dict[str, str] = {}
    for k, v in _KV.findall(line):
        (second if k in first else first).setdefault(k, v)
    reply = (second.get("src", ""), second.get("dst", ""), int(second.get("sport", 0)),
             int(second.get("dport", 0)))
    return CtEntry(proto=parts[0], src=first.get("src", ""), dst=first.get("dst", ""),
                   sport=int(first.get("sport", 0)), dport=int(first.get("dport", 0)),
                   flags=frozenset(_FLAG.findall(line)), id=int(first.get("id", 0)),
                   reply=reply)


def entries(ns: Netns, family: int = 4) -> list[CtEntry]:
    proc = ns.run("conntrack", "-L", "-f", "ipv4" if family == 4 else "ipv6", "-o", "id",
                  check=False)
    out = []
    for line in proc.stdout.splitlines():
        e = parse_line(line)
        if e is not None:
            out.append(e)
    return out


def offloaded_count(ns: Netns, family: int | None = None) -> int:
    args = ["conntrack", "-L", "-u", "OFFLOAD"]
    if family is not None:
        args += ["-f", "ipv4" if family == 4 else "ipv6"]
    proc = ns.run(*args, check=False)
    return sum(1 for line in proc.stdout.splitlines() if parse_line(line) is not None)
