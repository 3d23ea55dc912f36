"""Judges a lab VM run from what came back through the rw dir.

A VM run passes only if the guest wrote its exit status and a JUnit file, at
least one integration test ran, none failed, errored or was skipped: a kernel
that lacks a feature is a broken harness, not a pass.

Each failed test is named with where and why it failed, and `--summary` puts
those lines last: CI keeps only the tail of a long log, and the tail must say
which test broke on which run.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kernel", help="judge one run: the kernel series it was for")
    ap.add_argument("--vng-rc", type=int, default=-1)
    ap.add_argument("--summary", nargs="+", metavar="KERNEL",
                    help="judge build/results/KERNEL for each kernel again, e.g. after make test")
    ap.add_argument("--base", type=Path,
                    default=Path(__file__).resolve().parent.parent / "build" / "results",
                    help="where --summary finds the runs (default: build/results)")
    ap.add_argument("results", type=Path, nargs="?")
    args = ap.parse_args(argv)
    if args.summary:
        base = args.base
        rcs = []
        details: list[str] = []
        for k in args.summary:
            rc, lines = judge(k, base / k, -1, quiet_details=True)
            rcs.append(rc)
            details.extend(lines)
        if details:
            print("== failed tests ==")
            print("\n".join(details))
        return max(rcs)
    if not args.kernel or args.results is None:
        ap.error("give --kernel and the results dir, or --summary KERNEL...")
    return judge(args.kernel, args.results, args.vng_rc)[0]


def judge(kernel: str, res: Path, vng_rc: int, *,
          quiet_details: bool = False) -> tuple[int, list[str]]:
    """Prints the run's verdict; returns its exit status and one line per failed test."""
    tag = f"kernel {kernel}"
    guest_kernel = _read(res / "kernel") or "?"
    userspace = _read(res / "userspace")
    if userspace:
        guest_kernel += f"; {userspace}"
    rc_text = _read(res / "guest_rc")
    junit = res / "junit.xml"
    if rc_text is None:
        print(f"{tag}: FAILED: the guest's exit status was not written back "
              f"(vng exit {vng_rc}; see {res}/console.log)")
        return 1, [f"{kernel}: no results came back (see {res}/console.log)"]
    if not junit.exists():
        print(f"{tag}: FAILED: no JUnit results came back (guest exit {rc_text})")
        return 1, [f"{kernel}: no JUnit results came back (guest exit {rc_text})"]
    root = ET.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    tests = sum(int(s.get("tests", 0)) for s in suites)
    failures = sum(int(s.get("failures", 0)) for s in suites)
    errors = sum(int(s.get("errors", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    passed = tests - failures - errors - skipped
    rerun = _read(res / "rerun-after-kernel-death")
    if rerun:
        print(f"{tag}: note: run a second time: the first guest's kernel died during the "
              f"tests ({rerun}; {res}/console-died.log)")
    wall = _read(res / "wall_seconds") or "?"
    boot = _read(res / "guest_uptime_at_start") or "?"
    print(f"{tag} ({guest_kernel}): {tests} tests ran, {passed} passed, "
          f"{failures} failed, {errors} errors, {skipped} skipped "
          f"(guest up after {boot} s, VM wall {wall} s)")
    problems = []
    if tests == 0:
        problems.append("no integration test was collected")
    if failures or errors:
        problems.append(f"{failures + errors} tests failed")
    if skipped:
        problems.append(f"{skipped} tests were skipped (a kernel test must run, not skip)")
    if rc_text != "0":
        problems.append(f"pytest exited {rc_text} in the guest")
    details = [f"{kernel}: {line}" for line in failed_tests(root)]
    if details and not quiet_details:
        print("\n".join(details))
    if problems:
        print(f"{tag}: FAILED: " + "; ".join(problems))
        return 1, details or [f"{kernel}: " + "; ".join(problems)]
    return 0, []


def failed_tests(root: ET.Element) -> list[str]:
    """`test id -- file:line: first line of the message` for each failed, errored
    or skipped test case of a JUnit tree (pytest's)."""
    out = []
    for case in root.iter("testcase"):
        for kind in ("failure", "error", "skipped"):
            el = case.find(kind)
            if el is None:
                continue
            module = (case.get("classname") or "").replace(".", "/")
            test_id = f"{module}.py::{case.get('name')}" if module else str(case.get("name"))
            message = (el.get("message") or "").strip().splitlines()
            first = message[0] if message else kind
            where = _where(el.text or "", module)
            out.append(f"{kind.upper()} {test_id} -- {where}{_clip(first, 240)}")
    return out


def _where(text: str, module: str) -> str:
    """Where a pytest traceback failed: the last `path.py:LINE` in the test's own
    module, and the deepest one under tests/ when that is elsewhere (a fixture
    or a topology helper)."""
    own = deepest = ""
    for line in text.splitlines():
        head = line.split(": ", 1)[0]
        path, _, lineno = head.rpartition(":")
        if path.endswith(".py") and lineno.isdigit() and path.startswith("tests/"):
            deepest = head
            if path == f"{module}.py":
                own = head
    if own and deepest and not deepest.startswith(f"{module}.py:"):
        return f"{own} (in {deepest}): "
    return f"{own or deepest}: " if own or deepest else ""


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read(p: Path) -> str | None:
    try:
        return p.read_text().strip()
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
