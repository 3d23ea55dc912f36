"""libnftables inside a lab namespace.

A netlink socket belongs to the namespace it was opened in, so the calls run
in a child process started with ``ip netns exec`` that uses offloadd's own
libnftables backend.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from tests.lab.netns import Netns

_APPLY = """
import sys
from offloadd.kernel.nft import Nft
Nft().run(sys.stdin.read())
"""


def nft_apply(ns: Netns, script: str) -> None:
    ns.run(sys.executable, "-c", _APPLY, input=script)


def nft_list(ns: Netns, what: str = "ruleset") -> list[dict[str, Any]]:
    """The kernel's view through the nft command itself: an oracle independent of
    offloadd's own libnftables code (and a C binary starts fast in the VM)."""
    data = json.loads(ns.out("nft", "-j", "list", *what.split()))
    return [i for i in data.get("nftables", []) if "metainfo" not in i]


def rule_counter_packets(ns: Netns, family: str, table: str, chain: str) -> int:
    """Sum of the packet counters of a chain's rules."""
    total = 0
    for item in nft_list(ns, f"chain {family} {table} {chain}"):
        rule = item.get("rule")
        if not rule:
            continue
        for expr in rule.get("expr", []):
            if "counter" in expr:
                total += int(expr["counter"]["packets"])
    return total


def kernel_config_has_flowtables(config_text: str) -> bool:
    """Ground truth from a kernel's .config, independent of offloadd's probe."""
    want = ("CONFIG_NF_FLOW_TABLE", "CONFIG_NF_FLOW_TABLE_INET", "CONFIG_NFT_FLOW_OFFLOAD")
    have = {}
    for line in config_text.splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            have[k] = v
    return all(have.get(k) in ("y", "m") for k in want)
