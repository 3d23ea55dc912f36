"""Model-based: hundreds of random link operations, in bursts, with overruns.

After each burst settles, the devices in the flowtable (and its ifname set)
must equal what the selector picks from the links the kernel really has. The
daemon runs with a tiny netlink receive buffer so bursts overrun it (ENOBUFS)
and the resync path is exercised, not just the happy path.
"""

from __future__ import annotations

import fnmatch
import json
import random
from pathlib import Path

import pytest

from tests.lab.daemon import offloadd
from tests.lab.topology import Lab
from tests.lab.traffic import SETTLE_S

CONFIG = """
[[flowtable]]
name = "ft"
devices = ["lan*", "wan*"]
exclude = ["wan9*"]
"""
NAMES = [f"{p}{i}" for p in ("lan", "wan", "wan9", "x") for i in range(10, 22)]
# Random bursts after the big one (28 until 2026-12-03: 218 s of a slow day's
# VM; each burst ends with a full convergence wait, so fewer cost less time).
BURSTS = 16


def _selected(names: set[str]) -> set[str]:
    return {n for n in names
            if fnmatch.fnmatchcase(n, "lan*") or (fnmatch.fnmatchcase(n, "wan*")
                                                  and not fnmatch.fnmatchcase(n, "wan9*"))}


def _router_links(lab: Lab) -> set[str]:
    return {link["ifname"] for link in json.loads(lab.router.out("ip", "-j", "link", "show"))}


@pytest.mark.daemon_logic
def test_random_link_operations_converge(lab: Lab, tmp_path: Path) -> None:
    rng = random.Random(20261122)
    r = lab.router
    with offloadd(r, CONFIG, tmp_path, env={"OFFLOADD_NETLINK_RCVBUF": "4096"}) as d:
        d.wait_devices("ft", {"lan0", "lan1", "wan0"})
        # One big burst first: 80 veth pairs at once overrun the tiny buffer.
        big = [f"link add lan{100 + i} type veth peer name y{i}" for i in range(80)]
        r.run("ip", "-batch", "-", input="\n".join(big) + "\n")
        d.wait_devices("ft", _selected(_router_links(lab)))
        r.run("ip", "-batch", "-", input="".join(f"link del y{i}\n" for i in range(80)))
        d.wait_devices("ft", _selected(_router_links(lab)))
        ops_done = 160
        for _burst in range(BURSTS):
            have = _router_links(lab) - {"lo"}
            mine = sorted(have & set(NAMES))
            free = [n for n in NAMES if n not in have]
            lines = []
            for _ in range(rng.randint(10, 30)):
                op = rng.choice(["add", "add", "del", "rename", "down", "up", "move"])
                if op == "add" and len(free) >= 2:
                    a, b = rng.sample(free, 2)
                    free.remove(a)
                    free.remove(b)
                    lines.append(f"link add {a} type veth peer name {b}")
                    mine += [a, b]
                elif op == "del" and mine:
                    # Deleting one end of a veth takes its peer with it.
                    a = mine.pop(rng.randrange(len(mine)))
                    lines.append(f"link del {a}")
                    break  # the peer's name is unknown here; end the burst
                elif op == "rename" and mine and free:
                    a = mine.pop(rng.randrange(len(mine)))
                    b = free.pop(rng.randrange(len(free)))
                    lines += [f"link set {a} down", f"link set {a} name {b}"]
                    mine.append(b)
                elif op in ("down", "up") and mine:
                    lines.append(f"link set {rng.choice(mine)} {op}")
                elif op == "move" and mine:
                    a = mine.pop(rng.randrange(len(mine)))
                    lines.append(f"link set {a} netns {lab.client2.name}")
            if not lines:
                continue
            r.run("ip", "-force", "-batch", "-", input="\n".join(lines) + "\n", check=False)
            ops_done += len(lines)
            expected = _selected(_router_links(lab))
            d.wait_devices("ft", expected, timeout=SETTLE_S)
        log = d.log_text()
        assert d.proc.poll() is None, log
        assert "overrun (ENOBUFS)" in log, "no overrun was induced: the resync path went untested"
    print(f"{ops_done} link operations in {BURSTS} random bursts after the big one")
    assert ops_done >= 220, ops_done
