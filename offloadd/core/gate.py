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
chain before it) put the conntrack id into that direction's set; ``flow add``
needs the id in both. Replacing both sets (deleted and created empty, not
flushed: a flush is one notification per element) in the batch that
replaces the flowtables (a re-validation) makes each direction pass the
policy as it is now before its flow is offloaded again.
"""

from __future__ import annotations

from collections.abc import Iterable

PASSED_ORIGINAL = "passed_original"
PASSED_REPLY = "passed_reply"
PASSED_SETS = (PASSED_ORIGINAL, PASSED_REPLY)
# Room for every flow of a large gateway; the hash grows with use, and when it
# is full a new flow is only left on the slow path (never let through).
PASSED_SIZE = 1_048_576
# The conntrack UDP stream timeout; elements of offloaded flows expire (their
# packets no longer reach the chain), so a flow the kernel tears down later
# passes the chains again in both directions before it is offloaded again.
PASSED_TIMEOUT_S = 120

PASSED_DECLARATION = (f"{{ typeof ct id; size {PASSED_SIZE}; flags dynamic,timeout; "
                      f"timeout {PASSED_TIMEOUT_S}s; }}")


def _l4(protocols: Iterable[str]) -> str:
    protos = tuple(protocols)
    return protos[0] if len(protos) == 1 else "{ " + ", ".join(protos) + " }"


def passed_rules(protocols: Iterable[str]) -> tuple[str, str]:
    """The rules that record, per direction, flows whose packet got this far."""
    l4 = _l4(protocols)
    return (
        f"meta l4proto {l4} ct state established ct direction original "
        f"update @{PASSED_ORIGINAL} {{ ct id }}",
        f"meta l4proto {l4} ct state established ct direction reply "
        f"update @{PASSED_REPLY} {{ ct id }}",
    )


def gate_match() -> str:
    """The match an offload rule needs: both directions have passed."""
    return f"ct id @{PASSED_ORIGINAL} ct id @{PASSED_REPLY}"


def is_passed_declaration(json_set: dict[str, object], body: Iterable[str]) -> bool:
    """Whether a listed set is one of the gate's, declared as offloadd declares it
    (``body``: the lines of its native listing, which alone show ``typeof``
    and ``dynamic``)."""
    lines = tuple(body)
    flags = next((ln for ln in lines if ln.startswith("flags ")), "")
    return (json_set.get("name") in PASSED_SETS
            and "typeof ct id" in lines
            and "dynamic" in flags and "timeout" in flags
            and json_set.get("size") == PASSED_SIZE
            and json_set.get("timeout") == PASSED_TIMEOUT_S)
