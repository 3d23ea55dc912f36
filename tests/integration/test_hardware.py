"""Hardware offload modes on devices without it (veth): auto falls back, required reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.lab.daemon import offloadd
from tests.lab.topology import Lab
from tests.lab.traffic import SETTLE_S, wait_for


def test_auto_falls_back_to_software_on_veth(lab: Lab, tmp_path: Path) -> None:
    config = '[[flowtable]]\nname = "ft"\ndevices = ["lan*", "wan*"]\nhardware = "auto"\n'
    with offloadd(lab.router, config, tmp_path) as d:
        d.wait_devices("ft", {"lan0", "lan1", "wan0"})
        d.wait_devices("ft_hw", set())
        flags = lab.router.out("nft", "list", "flowtable", "inet", "offloadd", "ft_hw")
        assert "flags offload" in flags
        assert "flags offload" not in lab.router.out("nft", "list", "flowtable", "inet",
                                                     "offloadd", "ft")


@pytest.mark.daemon_logic
def test_required_leaves_incapable_devices_out_and_says_why(lab: Lab, tmp_path: Path) -> None:
    config = '[[flowtable]]\nname = "ft"\ndevices = ["lan*", "wan*"]\nhardware = "required"\n'
    with offloadd(lab.router, config, tmp_path) as d:
        d.wait_devices("ft_hw", set())
        wait_for(lambda: "cannot offload in hardware" in d.log_text(), SETTLE_S,
                 what="a log line naming the incapable device")
        assert d.proc.poll() is None
