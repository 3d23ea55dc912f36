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
    were); then every legacy FORWARD hook is assumed present. ``other``: FORWARD
    hooks of neither nftables nor a known legacy table, as (name, priority),
    from the kernel's hook list (they count like a legacy hook).
    """

    ipv4: frozenset[str] = frozenset()
    ipv6: frozenset[str] = frozenset()
    unreadable: str = ""
    other: tuple[tuple[str, int], ...] = ()

    @property
    def names(self) -> list[str]:
        """``ip filter``, ``ip6 mangle``, ...: each loaded table, sorted (then
        the other hooks')."""
        return ([f"ip {t}" for t in sorted(self.ipv4)]
                + [f"ip6 {t}" for t in sorted(self.ipv6)] + [n for n, _p in self.other])

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
        out.update(self.other)
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


@dataclass(frozen=True)
class Hook:
    """One function on the IP forward hook, as the kernel lists it (nfnetlink_hook)."""

    priority: int
    function: str = ""
    module: str = ""
    nftables: bool = False  # an nftables base chain (its table is listed elsewhere)


_LEGACY_PREFIXES = ("ipt_", "ip6t_", "iptable_", "ip6table_", "ip_tables", "ip6_tables")
_TABLE_AT = {p: t for t, p in FORWARD_PRIORITY.items()}


def from_forward_hooks(ipv4: list[Hook], ipv6: list[Hook]) -> LegacyTables:
    """The legacy tables behind the kernel's list of forward hooks, for a daemon
    that may not read /proc/net/ip_tables_names (0440 root).

    A legacy hook (ipt_do_table in ip_tables, iptable_mangle_hook, ...) is named
    after the table at its priority; any other hook that is no nftables chain
    counts too, under its function's name (it may drop: conservative).
    """
    tables: dict[str, set[str]] = {"ip": set(), "ip6": set()}
    other: list[tuple[str, int]] = []
    for fam, hooks in (("ip", ipv4), ("ip6", ipv6)):
        for h in hooks:
            if h.nftables:
                continue
            legacy = (h.function.startswith(_LEGACY_PREFIXES)
                      or h.module.startswith(_LEGACY_PREFIXES))
            if legacy and h.priority in _TABLE_AT:
                tables[fam].add(_TABLE_AT[h.priority])
            else:
                what = h.function or h.module or "unnamed"
                other.append((f"{fam} hook {what}", h.priority))
    return LegacyTables(ipv4=frozenset(tables["ip"]), ipv6=frozenset(tables["ip6"]),
                        other=tuple(sorted(other)))
