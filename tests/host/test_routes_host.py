"""offloadctl's route lookups (offloadd.kernel.routes, raw RTM_GETROUTE)
against the real kernel, as root: the same device as `ip route get`, and none
where there is no route."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from tests.lab.netns import Netns, create_netns, delete_netns

LOOKUP = ("import json, sys\nfrom offloadd.kernel.routes import RouteLookup\n"
          "r = RouteLookup()\nprint(json.dumps({a: r.device_towards(a) for a in sys.argv[1:]}))")


@pytest.fixture
def ns() -> Iterator[Netns]:
    n = create_netns(f"rt{uuid.uuid4().hex[:8]}")
    try:
        n.sh("ip link add rt0 type veth peer name rt1\n"
             "ip addr add 198.18.5.1/24 dev rt0\nip addr add fd0f:5::1/64 dev rt0 nodad\n"
             "ip link set rt0 up\nip link set rt1 up\n"
             # (no dummy devices in every host kernel: a second veth pair)
             "ip link add rt2 type veth peer name rt3\nip link set rt2 up\nip link set rt3 up\n"
             "ip route add 198.18.77.0/24 dev rt2\nip -6 route add fd0f:77::/64 dev rt2\n")
        yield n
    finally:
        delete_netns(n)


def _ip_route_get(ns: Netns, addr: str) -> str | None:
    got = ns.run("ip", "-j", "route", "get", addr, check=False)
    return json.loads(got.stdout)[0].get("dev") if got.returncode == 0 else None


def test_the_device_towards_an_address_is_what_ip_route_get_says(ns: Netns) -> None:
    addrs = ["198.18.5.9", "fd0f:5::9", "198.18.77.3", "fd0f:77::3", "127.0.0.1", "::1",
             "203.0.113.1", "2001:db8::1"]
    got = json.loads(ns.out(sys.executable, "-c", LOOKUP, *addrs, "not-an-address"))
    want = {a: _ip_route_get(ns, a) for a in addrs}
    assert want["198.18.5.9"] == "rt0" and want["198.18.77.3"] == "rt2"
    assert want["203.0.113.1"] is None  # no default route in the namespace
    assert got == {**want, "not-an-address": None}


def test_it_needs_no_pyroute2() -> None:
    code = ("import sys\nfrom offloadd.kernel.routes import RouteLookup\n"
            "RouteLookup().device_towards('127.0.0.1')\nprint('pyroute2' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"
