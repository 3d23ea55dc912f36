"""Fixtures for the integration suite, which runs inside the lab VM as root.

There is no skipping here: on a host that cannot run these tests they fail,
because a skipped kernel test would hide a broken harness.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.lab.nftns import wildcard_hooks_here
from tests.lab.topology import Lab, lab_topology


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--not-newest-kernel", action="store_true",
        help="leave out the tests marked one_kernel: they check the CLI or the dashboard, "
             "not the kernel, and `make test` runs them on the newest lab kernel only")


def pytest_report_header(config: pytest.Config) -> str:
    ok, why = wildcard_hooks_here()
    return (f"kernel wildcards: {'yes' if ok else 'no'} ({why})"
            + ("" if ok else "; the tests marked wildcards are deselected"))


def _deselect(config: pytest.Config, items: list[pytest.Item], marker: str) -> None:
    # Deselected, not skipped: a skip would count as a harness failure.
    dropped = [i for i in items if i.get_closest_marker(marker) is not None]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [i for i in items if i.get_closest_marker(marker) is None]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.integration)
    if not wildcard_hooks_here()[0]:
        # The versions say the kernel or nftables cannot (the header says
        # which); offloadd's own probe is what the tests check.
        _deselect(config, items, "wildcards")
    if config.getoption("--not-newest-kernel"):
        _deselect(config, items, "one_kernel")


@pytest.fixture(scope="session", autouse=True)
def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("integration tests need root and the lab VM: run `make test-vm KERNEL=6.1`")


@pytest.fixture
def lab() -> Iterator[Lab]:
    with lab_topology() as topo:
        yield topo
