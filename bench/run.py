"""`make bench` entry inside the lab VM: runs the cases, writes JSON and a summary.

Each case returns its raw samples and derived figures; the file also records
the kernel and the date, since only ratios measured in one run compare.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import hotplug

CASES: dict[str, Callable[[Path], dict[str, Any]]] = {
    "hotplug": hotplug.run,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("cases", nargs="*", default=list(CASES))
    a = ap.parse_args()
    unknown = [c for c in a.cases if c not in CASES]
    if unknown:
        print(f"bench: unknown case(s) {unknown}; known: {sorted(CASES)}", file=sys.stderr)
        return 2
    results = []
    for name in a.cases:
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory() as tmp:
            res = CASES[name](Path(tmp))
        res["wall_s"] = round(time.monotonic() - t0, 1)
        results.append(res)
        figures = {k: v for k, v in res.items() if k not in ("samples", "case")}
        print(f"bench {name}: {json.dumps(figures)}", flush=True)
    doc = {"kernel": platform.release(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "cases": results}
    a.out.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
