"""Judges a lab VM run from what came back through the rw dir.

A VM run passes only if the guest wrote its exit status and a JUnit file, at
least one integration test ran, none failed, errored or was skipped: a kernel
that lacks a feature is a broken harness, not a pass.
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
    ap.add_argument("results", type=Path, nargs="?")
    args = ap.parse_args(argv)
    if args.summary:
        base = Path(__file__).resolve().parent.parent / "build" / "results"
        rcs = [judge(k, base / k, -1) for k in args.summary]
        return max(rcs)
    if not args.kernel or args.results is None:
        ap.error("give --kernel and the results dir, or --summary KERNEL...")
    return judge(args.kernel, args.results, args.vng_rc)


def judge(kernel: str, res: Path, vng_rc: int) -> int:
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
        return 1
    if not junit.exists():
        print(f"{tag}: FAILED: no JUnit results came back (guest exit {rc_text})")
        return 1
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
    if problems:
        print(f"{tag}: FAILED: " + "; ".join(problems))
        return 1
    return 0


def _read(p: Path) -> str | None:
    try:
        return p.read_text().strip()
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
