"""Why is (or isn't) a connection offloaded? Pure reasoning over facts gathered elsewhere.

The facts are the conntrack entry (or its absence), the devices the router
uses towards each end, offloadd's config and the table as the kernel has it;
the answer is a verdict plus reasons an operator can act on, most decisive
first.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from offloadd.core.attach import wildcard_covering
from offloadd.core.config import Config
from offloadd.core.flows import IPS_ASSURED, IPS_OFFLOAD, IPS_SEEN_REPLY, OffloadedFlow
from offloadd.core.model import TableState, set_name

_PROTO_NAMES = {6: "tcp", 17: "udp"}


class Verdict(enum.Enum):
    OFFLOADED = "offloaded"
    NOT_OFFLOADED = "not offloaded"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Passed:
    """Whether each direction of the flow is in the gate's sets
    (offloadd.core.gate): a packet of it passed the forward chains lately."""

    original: bool
    reply: bool


@dataclass(frozen=True)
class Explanation:
    verdict: Verdict
    reasons: tuple[str, ...]
    flowtable: str | None = None


def _flowtable_of(table: TableState | None, dev: str | None) -> str | None:
    if table is None or dev is None:
        return None
    listed = next((ft.name for ft in table.flowtables if dev in ft.devices), None)
    # stack = "lower": a bridge or ppp device is not listed, the devices
    # beneath it are; the rule's guard set names it.
    listed = listed or next((ft.name for ft in table.flowtables
                             if (g := table.set(set_name(ft.name))) is not None
                             and dev in g.elements), None)
    # offloadd lists "wan*" only as a kernel wildcard, with the devices it
    # covers left out of the list.
    return listed or next((ft.name for ft in table.flowtables
                           if wildcard_covering(ft.devices, dev) is not None), None)


def explain(flow: OffloadedFlow | None, in_dev: str | None, out_dev: str | None,
            config: Config, table: TableState | None,
            *, passed: Passed | None = None) -> Explanation:
    if flow is None:
        return Explanation(Verdict.UNKNOWN, (
            "no conntrack entry matches: the router has not seen this connection, it has "
            "ended, or the addresses/ports are not as the router sees them (check NAT)",))
    in_ft, out_ft = _flowtable_of(table, in_dev), _flowtable_of(table, out_dev)
    if flow.status & IPS_OFFLOAD:
        mode = "hardware" if flow.hardware else "software"
        return Explanation(Verdict.OFFLOADED, (
            f"offloaded in {mode} via flowtable {in_ft or out_ft or '?'} "
            f"({in_dev or '?'} -> {out_dev or '?'})",), in_ft or out_ft)
    reasons: list[str] = []
    proto = _PROTO_NAMES.get(flow.orig.proto)
    if table is None:
        reasons.append(f"offloadd's table {config.daemon.family.value} {config.daemon.table} "
                       "does not exist: is offloadd running?")
    if proto is None:
        reasons.append(f"protocol {flow.proto_name} is never offloaded (only tcp and udp)")
    for role, dev, ft in (("incoming", in_dev, in_ft), ("outgoing", out_dev, out_ft)):
        if dev is None:
            reasons.append(f"no route gives the {role} device for this connection")
        elif ft is None and table is not None:
            reasons.append(f"{role} device {dev} is in no flowtable (not selected by the "
                           "config, excluded, or not attached yet)")
    if in_ft and out_ft and in_ft != out_ft:
        reasons.append(f"its devices are in different flowtables ({in_dev} in {in_ft}, "
                       f"{out_dev} in {out_ft}); a flow is offloaded only within one")
    selector = next((f for f in config.flowtables
                     if in_ft in f.kernel_names() or out_ft in f.kernel_names()), None)
    if selector is not None and proto is not None and proto not in selector.protocols:
        reasons.append(f"flowtable {selector.name} offloads only "
                       f"{', '.join(selector.protocols)}, not {proto}")
    if flow.helper:
        reasons.append(f"conntrack helper '{flow.helper}' is attached: the kernel never "
                       "offloads connections with a helper")
    if not flow.status & IPS_SEEN_REPLY:
        reasons.append("no reply seen yet: offload needs traffic in both directions")
    elif proto == "tcp" and not flow.status & IPS_ASSURED:
        reasons.append("TCP connection not established yet (handshake incomplete)")
    if selector is not None and selector.elephant_packets:
        packets = flow.packets
        if packets is None:
            reasons.append(f"below the elephant threshold? packet counts are unavailable "
                           f"(enable net.netfilter.nf_conntrack_acct); threshold "
                           f"{selector.elephant_packets}")
        elif packets <= selector.elephant_packets:
            reasons.append(f"below the elephant threshold: {packets} packets so far, "
                           f"offloaded after {selector.elephant_packets}")
    if passed is not None:
        missing = [d for d, ok in (("original", passed.original), ("reply", passed.reply))
                   if not ok]
        if missing:
            reasons.append(
                f"no packet of its {' or '.join(missing)} direction has passed the forward "
                "chains since the last re-validation (or since it left the fast path): it is "
                "offloaded once each direction has; if that direction keeps sending, a rule "
                "before offloadd's chain drops it, and the flow stays on the slow path")
    if not reasons:
        reasons.append("everything allows it: it will be offloaded by the next packet that "
                       "reaches offloadd's forward rule; if it stays on the slow path, a "
                       "forward chain with a lower priority may be dropping or diverting it")
    return Explanation(Verdict.NOT_OFFLOADED, tuple(reasons), in_ft or out_ft)

