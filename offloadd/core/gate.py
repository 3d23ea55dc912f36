"""The gate before ``flow add``: a flow is offloaded only after a packet of
each of its directions has passed the forward chains.

Why: a flowtable entry forwards both directions of a flow, so whichever
packet adds it decides for both. A rule that drops one direction only (``ip
daddr X udp dport 53 drop``, ``iifname wan0 ... drop``) never sees the other
direction's packets, and before this gate the next reply of a flow it had just
blocked offloaded the flow again; from then on the blocked direction skipped
the rule (7.3.4, nft alone: the server kept receiving, the drop rule's counter
stayed at 0; 6.12, offloadd before the gate: all 6 flows of the integration
test offloaded again while the rule stood).

Each direction's packets that reach offloadd's chain (they passed every
chain before it) put the flow's key into that direction's set; ``flow add``
needs the key in both. The key is the conntrack id with the flow's two ports
as the forward hook sees them (client port, server port: before SNAT, after
DNAT, the same from either direction's packets). The id alone is a 32-bit
hash: with 10^6 ids in a set, a new flow's id is already there with
probability 2.4e-4, and such a flow whose replies an admin rule drops was
offloaded anyway — its replies skipping that rule from then on. With the ports
another flow's element matches only with the same id and the same client and
server ports (the client port alone divides the chance by ~2^15). (nftables
1.0.6 refuses ``ct original proto-src`` in a set key; the packet's own ports
work on every version.)

Replacing both sets (deleted and created empty, not flushed: a flush is one
notification per element) in the batch that replaces the flowtables (a
re-validation) makes each direction pass the policy as it is now before its
flow is offloaded again.

Each set's ``size`` caps its elements; a full set leaves new flows on the
slow path (fail closed), so the cap follows the box's conntrack table
(``gate_size``). A set found larger than offloadd would declare it (an
operator's) is kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

PASSED_ORIGINAL = "passed_original"
PASSED_REPLY = "passed_reply"
PASSED_SETS = (PASSED_ORIGINAL, PASSED_REPLY)
# The least room a gate set is declared with (gate_size); the hash grows with
# use, and when it is full a new flow is only left on the slow path (never let
# through).
PASSED_SIZE = 1_048_576
# nft declares a set's size in 32 bits.
_SIZE_MAX = 2**32 - 1
# The conntrack UDP stream timeout; elements of offloaded flows expire (their
# packets no longer reach the chain), so a flow the kernel tears down later
# passes the chains again in both directions before it is offloaded again.
PASSED_TIMEOUT_S = 120
# How often the kernel collects a gate set's expired elements. Its default is
# every second, and each collection walks every element: with 2 x 500k
# elements that kept 16-18 % of a TCG vCPU busy on an idle box (6.12 and
# 7.3.4, measured); at 10 s each walk of a 1M-element set was still one
# 0.33-s stretch in which 6.12's vCPU ran nothing else (7.3.4 preempts it).
# Expired elements no longer match (every lookup checks), so collecting them
# later only leaves them in memory (and counted against the size) up to this
# much longer: 1 minute on top of the 2-minute timeout.
PASSED_GC_INTERVAL_S = 60

PASSED_TYPEOF = "typeof ct id . th sport . th dport"


def gate_size(conntrack_max: int | None) -> int:
    """The size each gate set is declared with: twice ``nf_conntrack_max``,
    at least PASSED_SIZE (also when the limit cannot be read: None).

    Why twice: an element lives up to PASSED_TIMEOUT_S after its flow's last
    slow-path packet, so besides the live flows' (at most nf_conntrack_max)
    the set holds those of flows that ended in the last two minutes (and
    PASSED_GC_INTERVAL_S more until collected): twice is enough while at
    most nf_conntrack_max flows end in any three minutes (5,500 a second at
    a limit of 1M); beyond that a full set leaves new flows on the slow path
    (offloadd_gate_elements, alert OffloaddGateNearlyFull). The cap
    costs little until used: the kernel's hash starts small (its first size
    is bounded whatever the cap) and grows with its elements."""
    if conntrack_max is None or conntrack_max <= 0:
        return PASSED_SIZE
    return min(max(PASSED_SIZE, 2 * conntrack_max), _SIZE_MAX)


def sized_by(size: int, conntrack_max: int | None) -> str:
    """Why the gate's sets hold at most ``size`` flows, for the log and status."""
    want = gate_size(conntrack_max)
    if conntrack_max is None:
        why = "the minimum; nf_conntrack_max unreadable"
    elif want > 2 * conntrack_max:
        why = f"the minimum; 2 x nf_conntrack_max {conntrack_max} is less"
    else:
        why = f"2 x nf_conntrack_max {conntrack_max}"
    if size > want:
        return f"kept as found, larger than offloadd's {want}: {why}"
    if size < want:
        return f"below offloadd's {want}: {why}; re-created at the next reconcile"
    return why


@dataclass(frozen=True)
class GateFill:
    """How full the gate's sets were at the last count (offloadd.service.gatecount).

    Why kept apart from the size: the size is what offloadd declared, the fill
    is the packet path's doing and can only be counted now and then (a full
    set leaves new flows on the slow path without a word). A failed count
    keeps the last counted elements and says why they are stale.
    """

    # Set name -> elements it held at ``time``; empty before a count succeeded.
    elements: Mapping[str, int] = field(default_factory=dict)
    time: float = 0.0  # Unix time of that count; 0: none yet
    error: str = ""  # why the latest count failed; "": the latest is this one
    # How long that count took (the kernel's walk of the sets, mostly: it
    # grows with the square of the elements); 0: not timed. Not part of
    # what a fill is (two counts of the same elements are the same fill).
    duration_s: float = field(default=0.0, compare=False)

    @property
    def stale(self) -> bool:
        return bool(self.error)

    def failed(self, why: str) -> GateFill:
        """This fill after a count that failed: the same elements, now stale."""
        return GateFill(self.elements, self.time, why, self.duration_s)


def passed_declaration(size: int) -> str:
    """The body of a gate set's ``add set``, holding at most ``size`` elements."""
    return (f"{{ {PASSED_TYPEOF}; size {size}; flags dynamic,timeout; "
            f"timeout {PASSED_TIMEOUT_S}s; gc-interval {PASSED_GC_INTERVAL_S}s; }}")


def l4_prefix(protocols: Iterable[str]) -> tuple[str, str]:
    """(the protocol match a gate rule starts with, the ports' protocol).

    As nft prints them, which is how rules are compared: for one protocol,
    ``udp sport`` implies ``meta l4proto udp`` and nft drops the match; for
    several, ``th`` needs it."""
    protos = tuple(protocols)
    if len(protos) == 1:
        return "", protos[0]
    return "meta l4proto { " + ", ".join(protos) + " } ", "th"


def _key(th: str, direction: str) -> str:
    """The key in (client port, server port) order, from a packet of ``direction``."""
    ports = (f"{th} sport . {th} dport" if direction == "original"
             else f"{th} dport . {th} sport")
    return f"ct id . {ports}"


def gate_step(protocols: Iterable[str], direction: str) -> str:
    """What a packet of ``direction`` does at the gate, in its flowtable's
    offload rule: records that it got this far (``update`` keeps the element
    alive while the flow stays on the slow path), then goes on only if the
    other direction's packets have passed too. One rule per direction (not
    a recording rule and a separate offload rule): every slow-path packet
    of a flowtable's devices runs the rule's guard once, not twice."""
    _, th = l4_prefix(protocols)
    key = _key(th, direction)
    own, other = ((PASSED_ORIGINAL, PASSED_REPLY) if direction == "original"
                  else (PASSED_REPLY, PASSED_ORIGINAL))
    return f"update @{own} {{ {key} }} {key} @{other}"


def element(ct_id: int, client_port: int, server_port: int) -> str:
    """A gate element, as ``get element`` takes it: the flow's id, its
    original tuple's source port and its reply tuple's source port (the
    server's port after DNAT)."""
    return f"{ct_id} . {client_port} . {server_port}"


def is_passed_declaration(json_set: dict[str, object], body: Iterable[str]) -> bool:
    """Whether a listed set is one of the gate's, declared as offloadd declares it
    (``body``: the lines of its native listing, which alone show ``typeof``
    and ``dynamic``). At any size: the planner decides whether it is large
    enough (offloadd.core.plan)."""
    lines = tuple(body)
    flags = next((ln for ln in lines if ln.startswith("flags ")), "")
    return (json_set.get("name") in PASSED_SETS
            and PASSED_TYPEOF in lines
            and "dynamic" in flags and "timeout" in flags
            and json_set.get("timeout") == PASSED_TIMEOUT_S
            and json_set.get("gc-interval") == PASSED_GC_INTERVAL_S)


def listed_size(json_set: dict[str, object]) -> int:
    """A listed set's ``size`` (0 when none is listed: smaller than any offloadd
    declares, so the planner re-creates the set with one)."""
    size = json_set.get("size")
    return size if isinstance(size, int) and not isinstance(size, bool) else 0
