"""Link messages read into a table of links.

Why: the kernel describes links only as rtnetlink messages, and which of
them offloadd cares about (no loopback, no AF_BRIDGE port reports, renames
in place, moves to another namespace as removals) is the subtle part of
watching links. It needs no socket, so it lives apart from the watcher and
is tested against plain dicts and pyroute2's message class.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from offloadd.core.model import Link

RTM_NEWLINK = 16
RTM_DELLINK = 17
AF_UNSPEC = 0
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_RUNNING = 0x40
IFF_LOWER_UP = 0x10000
# What a link message says that makes the kernel flush its IPv4 route cache
# (fib_netdev_event: NETDEV_UP, DOWN, CHANGE, CHANGEMTU; arp_netdev_event:
# NETDEV_CHANGEADDR): the up, running and carrier flags, the MTU, the address.
_FLUSH_FLAGS = IFF_UP | IFF_RUNNING | IFF_LOWER_UP
ARPHRD_PPP = 512
ARPHRD_LOOPBACK = 772


class NlMsg(Protocol):
    """What is read from an rtnetlink link message.

    pyroute2's ``ifinfmsg`` fits (its ``get`` resolves both fields and NLA
    names), and so does a plain ``dict`` in tests.
    """

    def get(self, key: str, /) -> Any: ...


def decode_name(raw: bytes) -> str:
    """A name from the kernel (bytes to it) as text: UTF-8, and any byte that
    is not UTF-8 as \\xNN.

    Replacement characters ("lan\\ufffd") made a name that looked writable:
    it was sent to nft, and the kernel's "no such device" was retried every
    0.2 s forever, holding back every other device's change. A backslash is
    never safe to write (offloadd.core.config.device_name_problem), so such a
    device is left out with one log line; the text stays printable ASCII for
    the journal, status and metrics, and two such names stay apart.
    """
    return raw.decode("utf-8", "backslashreplace")


def _text(value: Any) -> str:
    # pyroute2 hands over bytes where a name is not UTF-8; str() would make
    # "b'...'" of them, a different and writable name.
    return decode_name(value) if isinstance(value, bytes) else str(value)


def _msg_type(msg: NlMsg) -> int | None:
    header = msg.get("header")
    if header is None:
        return None
    value = header.get("type")
    return int(value) if value is not None else None


def _family(msg: NlMsg) -> int:
    return int(msg.get("family") or AF_UNSPEC)


def link_from_msg(msg: NlMsg) -> Link | None:
    """The Link an RTM_NEWLINK message describes, or None if it is none of ours.

    None for loopback (nothing to offload), for messages without a name, and
    for AF_BRIDGE messages: the bridge module reports port changes with
    family AF_BRIDGE, and those describe bridge-port state, not the device.

    ``up`` is IFF_UP, the administrative state set by ``ip link set up``;
    operstate follows carrier (a veth whose peer is down is
    LOWERLAYERDOWN, an empty bridge is DOWN) and would churn snapshots on
    every cable event, while a flowtable accepts a device either way. It is
    only reported, never used to select devices.
    """
    if _family(msg) != AF_UNSPEC:
        return None
    index = msg.get("index")
    name = msg.get("IFLA_IFNAME")
    if index is None or not name:
        return None
    ifi_type = int(msg.get("ifi_type") or 0)
    flags = int(msg.get("flags") or 0)
    if ifi_type == ARPHRD_LOOPBACK or flags & IFF_LOOPBACK:
        return None
    linkinfo = msg.get("IFLA_LINKINFO")
    # IFLA_INFO_SLAVE_KIND (a NIC enslaved to a bridge) is deliberately not
    # read: it names the master's kind, not the device's.
    kind = linkinfo.get("IFLA_INFO_KIND") if linkinfo is not None else None
    if kind is None and ifi_type == ARPHRD_PPP:
        # pppd creates its devices through ioctls, so they carry no linkinfo.
        kind = "ppp"
    master = msg.get("IFLA_MASTER")
    lower = msg.get("IFLA_LINK")
    # Only a VLAN's lower device is kept (offloadd.core.stack follows no
    # other), and only in this namespace: a veth's IFLA_LINK is its peer,
    # and with IFLA_LINK_NETNSID the index is another namespace's.
    if kind != "vlan" or msg.get("IFLA_LINK_NETNSID") is not None or lower == index:
        lower = None
    return Link(index=int(index), name=_text(name), kind=_text(kind) if kind else None,
                up=bool(flags & IFF_UP), master=int(master) if master else None,
                lower=int(lower) if lower else None)


def _flush_facts(msg: NlMsg) -> tuple[int, Any, Any]:
    return (int(msg.get("flags") or 0) & _FLUSH_FLAGS, msg.get("IFLA_MTU"),
            msg.get("IFLA_ADDRESS"))


class LinkTable:
    """Links by index, updated from link messages; no kernel access.

    ``route_flushes`` counts the messages that tell of a route cache flush:
    a link gone, one that came up, or one whose up/running/carrier flags, MTU
    or address changed. Why: on Linux 7.3 such a flush leaves offloaded IPv4
    flows behind (offloadd.core.repair), and most flushes on a gateway come
    with a link event (a bridge port joining or leaving changes the bridge's
    address; a port coming up flushes). Route and address changes flush too
    and are not seen here (the repair's periodic check covers them).
    """

    def __init__(self, links: Iterable[Link] = ()) -> None:
        self._by_index: dict[int, Link] = {link.index: link for link in links}
        # Per link, what a flush is read from (_flush_facts); kept apart
        # from Link: no device selection depends on it, and carrier flaps
        # must not churn snapshots of links.
        self._facts: dict[int, tuple[int, Any, Any]] = {}
        self.route_flushes = 0

    def __len__(self) -> int:
        return len(self._by_index)

    def get(self, index: int) -> Link | None:
        return self._by_index.get(index)

    def links(self) -> tuple[Link, ...]:
        """Sorted by name (then index), so equal tables give equal tuples."""
        return tuple(sorted(self._by_index.values(), key=lambda x: (x.name, x.index)))

    def apply(self, msg: NlMsg) -> bool:
        """Applies one message; True if a link appeared, vanished or changed.

        Renames keep the index, so they update in place. Up/down counts as a
        change (status shows it) although device selection ignores it. A
        DELLINK carrying IFLA_NEW_NETNSID is a move to another namespace: for
        this namespace the device is gone all the same.
        """
        if _family(msg) != AF_UNSPEC:
            return False
        mtype = _msg_type(msg)
        index = msg.get("index")
        if index is None:
            return False
        index = int(index)
        if mtype == RTM_DELLINK:
            self._facts.pop(index, None)
            gone = self._by_index.pop(index, None) is not None
            self.route_flushes += gone
            return gone
        if mtype != RTM_NEWLINK:
            return False
        link = link_from_msg(msg)
        old = self._by_index.get(index)
        if link is None:
            self._facts.pop(index, None)
            return self._by_index.pop(index, None) is not None
        self._by_index[index] = link
        facts, before = _flush_facts(msg), self._facts.get(index)
        self._facts[index] = facts
        if facts != before and (before is not None or facts[0] & IFF_UP):
            self.route_flushes += 1
        return old != link

    def apply_batch(self, msgs: Iterable[NlMsg]) -> bool:
        """Applies each message; True if a link changed or a route flush was seen."""
        flushes = self.route_flushes
        changed = False
        for msg in msgs:
            changed |= self.apply(msg)
        return changed or self.route_flushes != flushes

    def replace(self, dump: Iterable[NlMsg]) -> bool:
        """Replaces the content with a full dump; True if anything differs.

        Replacing a table that held links (a resync after an overrun: events
        were lost) counts a route flush when the flush facts differ; the
        first dump counts none.
        """
        fresh = LinkTable()
        for msg in dump:
            fresh.apply(msg)
        changed = fresh._by_index != self._by_index
        if self._by_index and fresh._facts != self._facts:
            self.route_flushes += 1
        self._by_index = fresh._by_index
        self._facts = fresh._facts
        return changed
