"""Which iptables-legacy tables are loaded in this network namespace.

Why a kernel edge of its own: legacy tables are no nf_tables objects, so
neither listings nor change events show them; the kernel lists the loaded
ones per network namespace in /proc/net/ip_tables_names and
ip6_tables_names (a table is instantiated in a namespace when iptables-legacy
first touches it there). Reading them is two small file reads, cheap enough
for every reconcile and a poll. Those files are 0440 root, so the daemon as
the systemd unit runs it (a dynamic user with CAP_NET_ADMIN) cannot read
them; it asks the kernel for the list of functions on the IPv4 and IPv6
forward hooks instead (nfnetlink_hook, 5.14+, CAP_NET_ADMIN: one netlink dump
per family). Where neither works, the LegacyTables says why, and the pure side
assumes every legacy FORWARD hook.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path

from offloadd.core.xtables import Hook, LegacyTables, from_forward_hooks
from offloadd.kernel.nlattr import NLA_HDR, NLMSG_HDR, attrs

PROC_NET = Path("/proc/net")

NETLINK_NETFILTER = 12
NFNL_SUBSYS_HOOK = 12  # uapi nfnetlink.h
NFNL_MSG_HOOK_GET = 0
NFNLA_HOOK_HOOKNUM = 1
NFNLA_HOOK_PRIORITY = 2
NFNLA_HOOK_FUNCTION_NAME = 4
NFNLA_HOOK_MODULE_NAME = 5
NFNLA_HOOK_CHAIN_INFO = 6
NF_INET_FORWARD = 2
NFPROTO = {socket.AF_INET: 2, socket.AF_INET6: 10}
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3


def _names(path: Path) -> frozenset[str]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        # No ip_tables module (or no IPv6): no legacy table can be loaded.
        return frozenset()
    return frozenset(line.strip() for line in text.splitlines() if line.strip())


def _hook(data: bytes, start: int, end: int) -> Hook:
    prio, function, module, nft = 0, "", "", False
    for kind, value in attrs(data, start, end):
        if kind == NFNLA_HOOK_PRIORITY and len(value) >= 4:
            prio = struct.unpack_from(">i", value)[0]
        elif kind == NFNLA_HOOK_FUNCTION_NAME:
            function = value.split(b"\0", 1)[0].decode("utf-8", "replace")
        elif kind == NFNLA_HOOK_MODULE_NAME:
            module = value.split(b"\0", 1)[0].decode("utf-8", "replace")
        elif kind == NFNLA_HOOK_CHAIN_INFO:
            nft = True
    return Hook(prio, function, module, nft)


def parse_hooks(chunks: list[bytes]) -> tuple[list[Hook], bool]:
    """The hooks in a dump's datagrams, and whether its end (NLMSG_DONE) came.

    Raises OSError for an NLMSG_ERROR answer (no nfnetlink_hook: EOPNOTSUPP).
    """
    hooks: list[Hook] = []
    for data in chunks:
        pos = 0
        while pos + NLMSG_HDR.size <= len(data):
            length, mtype, _flags, _seq, _pid = NLMSG_HDR.unpack_from(data, pos)
            if length < NLMSG_HDR.size:
                break
            end = min(pos + length, len(data))
            if mtype == NLMSG_DONE:
                return hooks, True
            if mtype == NLMSG_ERROR:
                code = -struct.unpack_from("=i", data, pos + NLMSG_HDR.size)[0]
                if code:
                    raise OSError(code, f"nfnetlink_hook: {os.strerror(code)}")
            elif mtype == (NFNL_SUBSYS_HOOK << 8) | NFNL_MSG_HOOK_GET:
                hooks.append(_hook(data, pos + NLMSG_HDR.size + 4, end))
            pos += (length + 3) & ~3
    return hooks, False


def forward_hooks(family: socket.AddressFamily) -> list[Hook]:
    """Every function on ``family``'s forward hook in this namespace, with its priority."""
    attr = NLA_HDR.pack(8, NFNLA_HOOK_HOOKNUM) + struct.pack(">I", NF_INET_FORWARD)
    body = struct.pack("=BBH", NFPROTO[family], 0, 0) + attr
    msg = NLMSG_HDR.pack(NLMSG_HDR.size + len(body), (NFNL_SUBSYS_HOOK << 8) | NFNL_MSG_HOOK_GET,
                         NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.settimeout(5)
        sock.bind((0, 0))
        sock.send(msg)
        chunks: list[bytes] = []
        while True:
            chunks.append(sock.recv(1 << 16))
            hooks, done = parse_hooks(chunks)
            if done:
                return hooks


def legacy_tables(proc_net: Path = PROC_NET,
                  hooks: Callable[[socket.AddressFamily], list[Hook]] = forward_hooks
                  ) -> LegacyTables:
    """The loaded legacy tables; ``unreadable`` says why they are unknown."""
    try:
        return LegacyTables(ipv4=_names(proc_net / "ip_tables_names"),
                            ipv6=_names(proc_net / "ip6_tables_names"))
    except OSError as e:
        why = f"cannot read {e.filename}: {e.strerror}"
    try:
        return from_forward_hooks(hooks(socket.AF_INET), hooks(socket.AF_INET6))
    except OSError as e:
        return LegacyTables(unreadable=f"{why}; nor list the forward hooks: {e.strerror or e}")
