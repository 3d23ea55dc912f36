"""The check preview: what the daemon would apply, planned with the kernel's
probed hooks, writing nothing (no transaction, no sysctl)."""

from __future__ import annotations

from offloadd.core.attach import KernelHooks
from offloadd.core.configparse import parse_config
from offloadd.core.model import Link
from offloadd.core.render import render
from offloadd.service.preview import preview
from tests.unit.fakes import FakeBackend

CONFIG = """
[[flowtable]]
name = "wan"
devices = ["eth0", "ppp0"]
elephant_packets = 100
"""
LINKS = (Link(1, "eth0", "veth"),)


def test_a_preview_writes_nothing_not_even_the_accounting_sysctl() -> None:
    b = FakeBackend()
    p = preview(parse_config(CONFIG), b, LINKS, KernelHooks())
    assert b.applied == [] and b.state is None and not b.accounting
    assert p.current is None and not p.plan.is_empty


def test_with_name_hooks_the_preview_declares_what_the_daemon_would() -> None:
    config = parse_config(CONFIG)
    without = preview(config, FakeBackend(), LINKS, KernelHooks())
    with_hooks = preview(config, FakeBackend(), LINKS,
                         KernelHooks(True, "name hooks: yes (probed)"))
    assert without.desired.table.flowtable("wan").devices == {"eth0"}  # type: ignore[union-attr]
    assert with_hooks.desired.table.flowtable("wan").devices == {  # type: ignore[union-attr]
        "eth0", "ppp0"}
    assert "ppp0" in render(with_hooks.plan, "inet", "offloadd")
    assert with_hooks.hooks.name_hooks_reason == "name hooks: yes (probed)"


def test_the_preview_sizes_the_gate_as_the_daemon_would() -> None:
    p = preview(parse_config(CONFIG), FakeBackend(conntrack_max=3_000_000), LINKS,
                KernelHooks())
    assert p.desired.table.passed_size == 6_000_000
    assert "size 6000000;" in render(p.plan, "inet", "offloadd")


def test_a_preview_of_a_table_in_place_is_empty() -> None:
    b = FakeBackend()
    config = parse_config(CONFIG)
    b.apply(preview(config, b, LINKS, KernelHooks()).plan)
    again = preview(config, b, LINKS, KernelHooks())
    assert again.plan.is_empty and again.current is not None
