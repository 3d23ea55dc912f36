"""iptables-legacy tables beside offloadd: which ones a forwarded packet meets, and where.

Why: a legacy (xtables) table registers its own netfilter hooks, which no
nftables listing shows. offloadd's forward chain must run strictly after every
hook that can drop a forwarded packet, or a flow is offloaded before their
verdict and its later packets skip them (measured on 6.12 before this: a legacy
FORWARD drop of the reply direction, offloadd's chain at the same priority 0,
240 replies delivered in 8 s). Equal priority is not "after": the kernel runs
hooks of equal priority in the order they were registered.

Pure: offloadd.kernel.xtables reads which tables are loaded; this says what
that means for the forward priority.
"""

from __future__ import annotations

from dataclasses import dataclass

# The FORWARD hook priority of each legacy table that has one, the same for
# IPv4 and IPv6 (NF_IP_PRI_* / NF_IP6_PRI_* in the kernel's uapi headers).
FORWARD_PRIORITY = {"mangle": -150, "filter": 0, "security": 50}
# Tables with no FORWARD hook: raw (prerouting -300, output), nat (prerouting,
# postrouting, input, output; and it sees only a connection's first packet).
NO_FORWARD = frozenset({"raw", "nat"})
# A table name the kernel lists that is none of the above: its hooks are
# unknown, so it counts as a FORWARD hook as late as any legacy table's.
UNKNOWN_PRIORITY = max(FORWARD_PRIORITY.values())


@dataclass(frozen=True)
class LegacyTables:
    """The legacy tables loaded in offloadd's network namespace.

    ``unreadable``: why the kernel's lists could not be read ("" when they
    were); then every legacy FORWARD hook is assumed present.
    """

    ipv4: frozenset[str] = frozenset()
    ipv6: frozenset[str] = frozenset()
    unreadable: str = ""

    @property
    def names(self) -> list[str]:
        """``ip filter``, ``ip6 mangle``, ...: each loaded table, sorted."""
        return ([f"ip {t}" for t in sorted(self.ipv4)]
                + [f"ip6 {t}" for t in sorted(self.ipv6)])

    def forward_hooks(self) -> dict[str, int]:
        """Table (``ip filter``) -> the priority of its FORWARD hook, for every
        loaded table a forwarded packet meets there."""
        if self.unreadable:
            return {f"{fam} {t} (assumed)": p for fam in ("ip", "ip6")
                    for t, p in FORWARD_PRIORITY.items()}
        out = {}
        for fam, tables in (("ip", self.ipv4), ("ip6", self.ipv6)):
            for t in sorted(tables):
                if t in FORWARD_PRIORITY:
                    out[f"{fam} {t}"] = FORWARD_PRIORITY[t]
                elif t not in NO_FORWARD:
                    out[f"{fam} {t}"] = UNKNOWN_PRIORITY
        return out

    def forward_priorities(self) -> list[int]:
        return sorted(set(self.forward_hooks().values()))

    def describe(self) -> str:
        """One line for the log, status and check."""
        if self.unreadable:
            return (f"iptables-legacy tables unknown ({self.unreadable}): every legacy "
                    "FORWARD hook assumed (mangle -150, filter 0, security 50)")
        if not self.names:
            return "no iptables-legacy tables loaded"
        hooks = self.forward_hooks()
        parts = [f"{n} (FORWARD priority {hooks[n]})" if n in hooks else f"{n} (no FORWARD hook)"
                 for n in self.names]
        return "iptables-legacy tables loaded: " + ", ".join(parts)
