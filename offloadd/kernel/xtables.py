"""Which iptables-legacy tables are loaded in this network namespace.

Why a kernel edge of its own: legacy tables are no nf_tables objects, so
neither listings nor change events show them; the kernel lists the loaded
ones per network namespace in /proc/net/ip_tables_names and
ip6_tables_names (a table is instantiated in a namespace when iptables-legacy
first touches it there). Reading them is two small file reads, cheap enough
for every reconcile and a poll. The files are 0440 root: a daemon that may not
read them gets a LegacyTables that says so (and the pure side then assumes
every legacy FORWARD hook).
"""

from __future__ import annotations

from pathlib import Path

from offloadd.core.xtables import LegacyTables

PROC_NET = Path("/proc/net")


def _names(path: Path) -> frozenset[str]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        # No ip_tables module (or no IPv6): no legacy table can be loaded.
        return frozenset()
    return frozenset(line.strip() for line in text.splitlines() if line.strip())


def legacy_tables(proc_net: Path = PROC_NET) -> LegacyTables:
    """The loaded legacy tables; ``unreadable`` says why they are unknown."""
    try:
        return LegacyTables(ipv4=_names(proc_net / "ip_tables_names"),
                            ipv6=_names(proc_net / "ip6_tables_names"))
    except OSError as e:
        return LegacyTables(unreadable=f"cannot read {e.filename}: {e.strerror}")
