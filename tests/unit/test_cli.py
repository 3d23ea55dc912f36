"""offloadd's command line: bad input ends in one line and exit 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BAD = {
    "wrong_type": '[[flowtable]]\nname = "a"\ndevices = "eth0"\n',
    "unknown_key": '[[flowtable]]\nname = "a"\ndevcies = ["eth0"]\n',
    "bad_glob": '[[flowtable]]\nname = "a"\ndevices = ["eth[0"]\n',
    "empty_devices": '[[flowtable]]\nname = "a"\ndevices = []\n',
    "duplicate_names": ('[[flowtable]]\nname = "a"\ndevices = ["x"]\n'
                        '[[flowtable]]\nname = "a"\ndevices = ["y"]\n'),
    "toml_syntax": '[[flowtable]\nname = "a"\n',
    "bad_hardware": '[[flowtable]]\nname = "a"\ndevices = ["x"]\nhardware = "maybe"\n',
}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "offloadd.cli.run", *args],
                          capture_output=True, text=True, check=False, timeout=60)


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_is_one_line_and_exit_2(tmp_path: Path, case: str) -> None:
    cfg = tmp_path / "offloadd.toml"
    cfg.write_text(BAD[case])
    for args in (["--config", str(cfg)], ["--check", "--config", str(cfg)]):
        proc = _run(*args)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith("offloadd: ") and str(cfg) in lines[0], lines[0]
        assert "Traceback" not in proc.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    proc = _run("--config", str(tmp_path / "nope.toml"))
    assert proc.returncode == 2
    assert "nope.toml" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_bad_argument_is_exit_2() -> None:
    proc = _run("--bogus")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "offloadd: unrecognized arguments: --bogus (see offloadd --help)"]


def test_help_documents_exit_status() -> None:
    proc = _run("--help")
    assert proc.returncode == 0
    assert "Exit status" in proc.stdout and "--check" in proc.stdout



def test_debug_logging_leaves_pyroute2_at_warnings() -> None:
    # A fresh interpreter, as in the daemon: pyroute2 is imported after
    # logging is set up (or never), and resets its logger's level then.
    code = (
        "import logging, sys\n"
        "from offloadd.cli.run import configure_logging\n"
        "configure_logging('debug')\n"
        "from pyroute2 import AsyncIPRoute\n"
        "(h,) = logging.getLogger().handlers\n"
        "def rec(name, level):\n"
        "    return logging.LogRecord(name, level, 'x.py', 1, 'm', None, None)\n"
        "print(h.filter(rec('offloadd.daemon', logging.DEBUG)),\n"
        "      h.filter(rec('pyroute2.netlink.core', logging.DEBUG)),\n"
        "      h.filter(rec('pyroute2.netlink.core', logging.WARNING)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["True", "False", "True"]


def test_starting_the_daemon_or_offloadctl_does_not_import_pyroute2() -> None:
    # Under emulation (the lab VM) importing pyroute2 took 2.4 s of every
    # daemon start and offloadctl call; only route lookups need it.
    code = (
        "import sys\n"
        "import offloadd.cli.ctl, offloadd.cli.run, offloadd.service.daemon\n"
        "import offloadd.kernel.links, offloadd.kernel.leftbehind, offloadd.kernel.conntrack\n"
        "offloadd.cli.run.configure_logging('info')\n"
        "print('pyroute2' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["False"]
