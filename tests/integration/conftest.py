"""Fixtures for the integration suite, which runs inside the lab VM as root.

There is no skipping here: on a host that cannot run these tests they fail,
because a skipped kernel test would hide a broken harness.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from tests.lab.nftns import wildcard_hooks_here
from tests.lab.topology import Lab, lab_topology


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--not-newest-kernel", action="store_true",
        help="leave out the tests marked one_kernel: they check the CLI or the dashboard, "
             "not the kernel, and `make test` runs them on the newest lab kernel only")
    parser.addoption(
        "--kernel-facing-only", action="store_true",
        help="leave out the tests marked daemon_logic: they check offloadd's own logic "
             "(coalescing, reload, the CLI), not the kernel; `make test` runs them once, "
             "on 7.x, and passes this on 6.1 and 6.12")
    parser.addoption(
        "--daemon-logic-only", action="store_true",
        help="run only the tests marked daemon_logic: `make test` runs 7.x's suite as two "
             "VMs (--kernel-facing-only and this), so that neither alone is the long pole")
    parser.addoption(
        "--with-wildcards", action="store_true",
        help="also run the tests marked wildcards: the VM has a kernel and nftables with "
             "wildcard hooks (7.x, nftables >= 1.1.6: `make test` runs them with Debian "
             "testing's userspace)")


def _kind(argv: Sequence[str]) -> str:
    """What a lab process is, for the census: the command inside ``ip netns
    exec``, and for Python the module, script or ``-c``."""
    args = [str(a) for a in argv]
    if args[:3] == ["ip", "netns", "exec"]:
        args = args[4:]
    if not args:
        return "?"
    if args[0] != sys.executable:
        return os.path.basename(args[0])
    rest = args[1:]
    if rest[:1] == ["-m"] and len(rest) > 1:
        return f"python -m {rest[1]}"
    if rest[:1] == ["-c"]:
        return "python -c"
    return f"python {os.path.basename(rest[0])}" if rest else "python"


_CENSUS = pytest.StashKey[Counter[str]]()


def pytest_configure(config: pytest.Config) -> None:
    # Every process the lab starts, by kind, in the run's summary: where the
    # emulated VM's time goes (a Python start there costs ~0.5-1 s and an
    # import of offloadd's daemon seconds more).
    census: Counter[str] = Counter()
    config.stash[_CENSUS] = census

    def count(event: str, args: tuple[Any, ...]) -> None:
        if event == "subprocess.Popen":
            census[_kind(args[1])] += 1

    sys.addaudithook(count)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    census = terminalreporter.config.stash.get(_CENSUS, None)
    if census:
        terminalreporter.write_line(
            f"lab processes started: {sum(census.values())} ("
            + ", ".join(f"{k} {n}" for k, n in census.most_common()) + ")")


def pytest_report_header(config: pytest.Config) -> str:
    ok, why = wildcard_hooks_here()
    return f"kernel wildcards by the versions: {'yes' if ok else 'no'} ({why})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.integration)
    # Asked for explicitly, so that a lab which lost its new nftables fails
    # instead of quietly running fewer tests.
    if config.getoption("--with-wildcards") and not wildcard_hooks_here()[0]:
        raise pytest.UsageError(
            f"--with-wildcards, but this VM cannot hook by prefix: {wildcard_hooks_here()[1]}")
    # Deselected, not skipped: a skip would count as a harness failure.
    leave_out = [] if config.getoption("--with-wildcards") else ["wildcards"]
    if config.getoption("--not-newest-kernel"):
        leave_out.append("one_kernel")
    if config.getoption("--kernel-facing-only"):
        leave_out.append("daemon_logic")
    dropped = [i for i in items if any(i.get_closest_marker(m) for m in leave_out)]
    if config.getoption("--daemon-logic-only"):
        dropped += [i for i in items
                    if i not in dropped and not i.get_closest_marker("daemon_logic")]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [i for i in items if i not in dropped]


@pytest.fixture(scope="session", autouse=True)
def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("integration tests need root and the lab VM: run `make test-vm KERNEL=6.1`")


@pytest.fixture
def lab() -> Iterator[Lab]:
    with lab_topology() as topo:
        yield topo
