"""Device names nft cannot write as that device, from the real kernel.

A veth literally named "lan*" (nft would read a wildcard and hook every lan
device) and one whose name is not UTF-8 (bytes the kernel takes as they are;
read before as "lan\\ufffd", which was sent, refused as "no such device" and
retried every 0.2 s, holding back every other change): each is left out with
one log line, and a device added after them is attached as usual. The unit
tests (test_model.py, test_render.py, test_rtnl.py, test_daemon.py) check the
same against fakes; this checks the bytes rtnetlink really sends.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.lab.daemon import offloadd
from tests.lab.topology import Lab
from tests.lab.traffic import SETTLE_S, wait_for

CONFIG = """
[[flowtable]]
name = "ft"
devices = ["lan*", "wan*"]
"""
STAR = "lan*"
# b"lan\xff" as an argv entry: Python passes a surrogate-escaped str as those bytes.
NOT_UTF8 = "lan\udcff"
STAR_LINE = 'flowtable ft: "lan*" cannot be written safely in an nft script'
NOT_UTF8_LINE = 'flowtable ft: "lan\\xff" cannot be written safely in an nft script'


@pytest.mark.daemon_logic
def test_odd_names_are_left_out_once_and_hold_back_no_other_device(lab: Lab,
                                                                   tmp_path: Path) -> None:
    r = lab.router
    base = {"lan0", "lan1", "wan0"}
    with offloadd(r, CONFIG, tmp_path) as d:
        d.wait_devices("ft", base)
        r.run("ip", "link", "add", STAR, "type", "veth", "peer", "name", "pstar")
        r.run("ip", "link", "add", NOT_UTF8, "type", "veth", "peer", "name", "pnotutf8")
        r.run("ip", "link", "add", "lan7", "type", "veth", "peer", "name", "plan7")
        # Listed as a wildcard, "lan*" would show here (and its set would not
        # even take it): the flowtable holds exactly the plain names.
        d.wait_devices("ft", base | {"lan7"})
        wait_for(lambda: STAR_LINE in d.log_text() and NOT_UTF8_LINE in d.log_text(),
                 SETTLE_S, what="one log line per odd name")
        r.run("ip", "link", "set", STAR, "up")  # a change of the device: still no new line
        r.run("ip", "link", "del", "lan7")
        d.wait_devices("ft", base)
        log = d.log_text()
        assert log.count(STAR_LINE) == 1 and log.count(NOT_UTF8_LINE) == 1, log[-3000:]
        assert "re-planning shortly" not in log, log[-3000:]  # no "no such device" retries
        assert "reconcile failed" not in log, log[-3000:]
        status = d.status()
        problems = " ".join(status.get("problems", []))
        assert '"lan*"' in problems and '"lan\\xff"' in problems, status
