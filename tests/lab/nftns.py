"""libnftables inside a lab namespace.

A netlink socket belongs to the namespace it was opened in, so the calls run
in a child process started with ``ip netns exec`` that uses offloadd's own
libnftables backend.
"""

from __future__ import annotations

import functools
import json
import platform
import re
import subprocess
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


def nft_list(ns: Netns, what: str = "ruleset", *, terse: bool = False) -> list[dict[str, Any]]:
    """The kernel's view through the nft command itself: an oracle independent of
    offloadd's own libnftables code (and a C binary starts fast in the VM).
    ``terse``: without set elements."""
    data = json.loads(ns.out("nft", *(["-t"] if terse else []), "-j", "list", *what.split()))
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


def counters(ns: Netns) -> dict[str, int]:
    """Packets of every named counter in the namespace, by name."""
    data = json.loads(ns.out("nft", "-j", "list", "counters"))
    return {c["counter"]["name"]: int(c["counter"]["packets"])
            for c in data.get("nftables", []) if "counter" in c}


_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


def _version(text: str) -> tuple[int, int, int] | None:
    m = _VERSION.search(text)
    return (int(m[1]), int(m[2]), int(m[3] or 0)) if m else None


def wildcard_hooks_by_version(kernel_release: str, nft_version: str) -> tuple[bool, str]:
    """Whether this kernel and nftables hook flowtable devices by prefix ("wan*"),
    and why, from their versions alone: Linux 6.17+ or 6.16.6+, nftables 1.1.6+.
    An oracle independent of offloadd's probe, which asks the kernel instead."""
    k, n = _version(kernel_release), _version(nft_version)
    nft = nft_version.strip() or "nft"
    if k is None or not (k >= (6, 17, 0) or (k[:2] == (6, 16) and k[2] >= 6)):
        return False, f"kernel {kernel_release} has no wildcard hooks (6.16.6+ or 6.17+)"
    if n is None or n < (1, 1, 6):
        return False, f'{nft} sends "wan*" as a literal name (wildcards need 1.1.6+)'
    return True, f"kernel {kernel_release} with {nft}"


@functools.cache
def wildcard_hooks_here() -> tuple[bool, str]:
    """wildcard_hooks_by_version for this kernel and the nft on this machine."""
    try:
        out = subprocess.run(["nft", "--version"], capture_output=True, text=True,
                             check=False, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"nft --version failed: {e}"
    return wildcard_hooks_by_version(platform.release(), out)


def kernel_config_has_flowtables(config_text: str) -> bool:
    """Ground truth from a kernel's .config, independent of offloadd's probe."""
    want = ("CONFIG_NF_FLOW_TABLE", "CONFIG_NF_FLOW_TABLE_INET", "CONFIG_NFT_FLOW_OFFLOAD")
    have = {}
    for line in config_text.splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            have[k] = v
    return all(have.get(k) in ("y", "m") for k in want)
