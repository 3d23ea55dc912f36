"""The full-system tests share one system, in this order: install the Debian
package (a previous build, then an upgrade to this one), the service as it
installed it, then a purge. Within a file, tests run in file order."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .common import UNIT, ip, run

ORDER = ("test_package.py", "test_systemd.py", "test_purge.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return ORDER.index(name) if name in ORDER else len(ORDER)
    items.sort(key=rank)  # stable: each file keeps its own order


@pytest.fixture(scope="session", autouse=True)
def network() -> Iterator[None]:
    """A router (this, the initial netns) between netns a (via lan0) and b (via wan0),
    plus a dummy lan1: what offloadd is configured to manage."""
    if not Path("/run/systemd/system").is_dir():
        yield  # not the VM: every test skips (common.NEEDS_SYSTEMD)
        return
    for ns in ("a", "b"):
        ip("netns", "add", ns)
        ip("-n", ns, "link", "set", "lo", "up")
    ip("link", "add", "lan0", "type", "veth", "peer", "name", "a0", "netns", "a")
    ip("link", "add", "wan0", "type", "veth", "peer", "name", "b0", "netns", "b")
    ip("link", "add", "lan1", "type", "dummy")
    for dev, addr in (("lan0", "10.1.0.1/24"), ("wan0", "10.2.0.1/24")):
        ip("addr", "add", addr, "dev", dev)
        ip("link", "set", dev, "up")
    ip("link", "set", "lan1", "up")
    for ns, dev, addr, gw in (("a", "a0", "10.1.0.2/24", "10.1.0.1"),
                              ("b", "b0", "10.2.0.2/24", "10.2.0.1")):
        ip("-n", ns, "addr", "add", addr, "dev", dev)
        ip("-n", ns, "link", "set", dev, "up")
        ip("-n", ns, "route", "add", "default", "via", gw)
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    yield
    run("systemctl", "stop", UNIT, check=False)
    for ns in ("a", "b"):
        run("ip", "netns", "del", ns, check=False)
