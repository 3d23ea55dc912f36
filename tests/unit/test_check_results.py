"""lab/check_results.py judges every VM run of `make test`, and CI keeps only
the tail of the log: the summary's last lines must name the failed test, the
line it failed on and why, and a run with a failure must not pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHECK = REPO / "lab" / "check_results.py"

FAILING = '''
def helper(x):
    assert x == 2, f"expected 2 flows offloaded, saw {x}"

def test_ok():
    pass

def test_bad():
    helper(1)
'''


def _run_pytest(tmp: Path, results: Path) -> None:
    tests = tmp / "tests" / "integration"
    tests.mkdir(parents=True)
    (tests / "test_sample.py").write_text(FAILING)
    results.mkdir()
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "--rootdir", str(tmp), "tests/integration/test_sample.py",
         f"--junitxml={results / 'junit.xml'}"],
        cwd=tmp, capture_output=True, check=False)
    (results / "guest_rc").write_text("1\n")
    (results / "kernel").write_text("6.1.0-test\n")


def test_failed_test_is_named_with_line_and_message(tmp_path: Path) -> None:
    results = tmp_path / "res"
    _run_pytest(tmp_path, results)
    out = subprocess.run(
        [sys.executable, str(CHECK), "--kernel", "6.1", str(results)],
        capture_output=True, text=True, check=False)
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert "2 tests ran, 1 passed, 1 failed" in lines[0]
    detail = [ln for ln in lines if ln.startswith("6.1: FAILURE")]
    assert len(detail) == 1, out.stdout
    # The failing line of the test module, not pytest's internals.
    assert "tests/integration/test_sample.py::test_bad" in detail[0]
    assert "tests/integration/test_sample.py:3: " in detail[0]
    assert "expected 2 flows offloaded, saw 1" in detail[0]
    assert lines[-1].startswith("kernel 6.1: FAILED: 1 tests failed")


def test_summary_puts_failures_last(tmp_path: Path) -> None:
    base = tmp_path / "build" / "results"
    base.mkdir(parents=True)
    _run_pytest(tmp_path, base / "6.1")
    ok = base / "6.12"
    ok.mkdir()
    (ok / "guest_rc").write_text("0\n")
    (ok / "junit.xml").write_text(
        '<testsuites><testsuite tests="1" failures="0" errors="0" skipped="0">'
        '<testcase classname="tests.integration.test_x" name="test_y"/>'
        '</testsuite></testsuites>')
    out = subprocess.run(
        [sys.executable, str(CHECK), "--base", str(base), "--summary", "6.1", "6.12", "7"],
        capture_output=True, text=True, check=False)
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert lines[-3] == "== failed tests =="
    assert lines[-2].startswith("6.1: FAILURE tests/integration/test_sample.py::test_bad -- ")
    assert lines[-1].startswith("7: no results came back")
    assert any(ln.startswith("kernel 6.12 (?): 1 tests ran, 1 passed") for ln in lines)
